"""A training job's hyperparameters, without importing torch: the notebooks and the tuner build them too."""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from helpers.runtime.catalog import BACKBONES, FINETUNE, HEADS


class TrainingError(ValueError):
    """Bad hyperparameters, data or folders, found before any expensive work."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training job (what SageMaker passes as ``--name value``)."""

    backbone: str = "efficientnet_lite0"
    weights: str = "DEFAULT"
    head: str = "linear"
    freeze_backbone: bool = True
    finetune: str = "all"  # a trainable backbone trains all its layers, or only its last stage ("last")
    augment: bool = False
    image_size: int = 224
    lr: float = 1e-3
    batch_size: int = 64
    epochs: int = 5
    optimizer: str = "adam"
    weight_decay: float = 0.0
    dropout: float = 0.2
    hidden: int = 512
    patience: int = 3
    seed: int = 42
    num_workers: int = -1
    amp: bool = True
    feature_cache: str = ""
    use_feature_cache: bool = True
    channels_last: bool = True
    cache_images: bool = True
    max_per_class: int = field(default=0, metadata={"help": "train on at most N images of each class, a seeded "
                                                            "sample (0: all); valid and test stay whole"})

    def __post_init__(self) -> None:
        problems = []
        if self.backbone not in BACKBONES:
            problems.append(f"backbone {self.backbone!r} is not known; choose one of {', '.join(BACKBONES)}")
        if self.head not in HEADS:
            problems.append(f"head {self.head!r} is not known; choose one of {', '.join(HEADS)}")
        if self.finetune not in FINETUNE:
            problems.append(f"finetune {self.finetune!r} is not known; choose one of {', '.join(FINETUNE)}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            problems.append(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            problems.append(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if self.optimizer not in ("adam", "sgd"):
            problems.append(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.weight_decay < 0 or self.patience < 0:
            problems.append("weight_decay and patience must be >= 0")
        if not (isinstance(self.max_per_class, int) and self.max_per_class >= 0):
            problems.append(f"max_per_class must be an integer >= 0 (0: every image), got {self.max_per_class!r}")
        if not 16 <= self.image_size <= 1024:
            problems.append(f"image_size must be between 16 and 1024, got {self.image_size!r}")
        if problems:
            raise TrainingError("Invalid hyperparameters:\n  - " + "\n  - ".join(problems))

    @property
    def trains_whole_backbone(self) -> bool:
        """Every layer learns: the training steps run the backward pass through the whole backbone."""
        return not self.freeze_backbone and self.finetune == "all"

    @property
    def uses_feature_cache(self) -> bool:
        """Frozen backbone + deterministic transform: the backbone's features can be computed once."""
        return self.use_feature_cache and self.freeze_backbone and not self.augment

    @property
    def uses_image_cache(self) -> bool:
        """Images run through the model and the transform is deterministic: decode and resize them once."""
        return self.cache_images and not self.augment and not self.uses_feature_cache

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        return strict_from_dict(cls, d, TrainingError, "hyperparameter")


def strict_from_dict(cls: type, d: Mapping[str, Any], error: type[Exception], what: str) -> Any:
    """``cls(**d)`` for a settings dataclass, with an ``error`` naming unknown keys instead of a TypeError."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise error(f"unknown {what}(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**d)


def str2bool(v: str | bool) -> bool:
    if isinstance(v, bool):
        return v
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def add_dataclass_flags(p: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of a settings dataclass, ``--some-name`` and ``--some_name`` (as SageMaker sends it)."""
    types = {bool: str2bool, int: int, float: float, str: str}
    for f in fields(cls):
        dashed, under = f"--{f.name.replace('_', '-')}", f"--{f.name}"
        flags = [dashed] if dashed == under else [dashed, under]
        help_text = f.metadata.get("help", "")
        p.add_argument(*flags, dest=f.name, type=types[type(f.default)], default=f.default,
                       help=f"{help_text} (default: {f.default!r})".strip())


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, not the machine's count)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
