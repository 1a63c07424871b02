"""Run configuration: the parameters every chapter shares, validated once, round-tripping to JSON."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.runtime.catalog import BACKBONES, WEIGHTS

#: Named dataset sources. Anything else must be a local folder, an ``http(s)://`` zip URL or an ``s3://`` prefix.
DATASETS: tuple[str, ...] = ("digits", "dogImages", "synthetic")

#: Datasets of small images, where a 64-pixel input is plenty and keeps the book fast on a CPU.
SMALL_DATASETS = ("digits", "synthetic")
SMALL_IMAGE_SIZE = 64

BACKENDS: tuple[str, ...] = ("local", "sagemaker")

#: The SageMaker PyTorch container for training *and* serving: one place, so both use the same torch.
SAGEMAKER_FRAMEWORK_VERSION = "2.6.0"
SAGEMAKER_PY_VERSION = "py312"

#: Environment variable that overrides the default work directory (tests point it at a temp folder).
WORK_DIR_ENV = "SAGEBOOK_WORK_DIR"


class ConfigError(ValueError):
    """A run parameter is invalid; the message says which and lists the valid choices."""


@contextlib.contextmanager
def temporary_environ(**values: str | None) -> Iterator[None]:
    """Set (or, with None, unset) environment variables for the duration of the block, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def project_root() -> Path | None:
    """The sagebook checkout that contains the current directory, if any."""
    for d in (Path.cwd(), *Path.cwd().parents):
        if (d / "_toc.yml").is_file() and (d / "helpers").is_dir():
            return d
    return None


#: Where a local run keeps data and artifacts in the local SageMaker's S3.
LOCAL_S3_PREFIX = "s3://sagebook-local/run"


def default_work_dir() -> Path:
    """``$SAGEBOOK_WORK_DIR``, else ``.work`` in the checkout, else ``~/.cache/sagebook``."""
    if env := os.environ.get(WORK_DIR_ENV):
        return Path(env).expanduser().resolve()
    root = project_root()
    return (root / ".work") if root else Path.home() / ".cache" / "sagebook"


def _choices(values: tuple[str, ...]) -> str:
    return ", ".join(values)


def is_remote_source(dataset: str) -> bool:
    return dataset.startswith(("http://", "https://", "s3://"))


@dataclass(frozen=True)
class RunConfig:
    """Parameters shared by the chapters. Invalid values raise :class:`ConfigError` on creation."""

    dataset: str = "digits"
    backbone: str = "efficientnet_lite0"
    weights: str = "DEFAULT"
    backend: str = "local"
    work_dir: str = ""
    #: Side of the square model input; 0 picks 224, or 64 for the small embedded datasets (digits, synthetic).
    image_size: int = 0
    seed: int = 42
    #: ``s3://bucket/prefix`` data and artifacts go under (the local SageMaker's own bucket when empty).
    s3_prefix: str = ""
    #: AWS region for the sagemaker backend (empty: the boto3 default).
    region: str = ""
    #: Size of the ``synthetic`` dataset: classes and images per class (split 60/20/20).
    synthetic_classes: int = 4
    synthetic_images: int = 20
    #: Optional sha256 of a downloaded dataset archive.
    sha256: str = ""
    #: SageMaker MLflow tracking server (or MLflow App) ARN the sagemaker backend tracks to; empty: no tracking
    #: there. The local backend always tracks, to a SQLite store in the work folder.
    mlflow_arn: str = ""

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            raise ConfigError("Invalid run configuration:\n  - " + "\n  - ".join(problems))
        if not self.work_dir:
            object.__setattr__(self, "work_dir", str(default_work_dir()))
        if self.image_size == 0:
            object.__setattr__(self, "image_size", SMALL_IMAGE_SIZE if self.dataset in SMALL_DATASETS else 224)
        if not self.s3_prefix and self.backend == "local":
            object.__setattr__(self, "s3_prefix", LOCAL_S3_PREFIX)

    def _problems(self) -> Iterator[str]:
        local = not is_remote_source(self.dataset) and Path(self.dataset).expanduser().is_dir()
        if self.dataset not in DATASETS and not is_remote_source(self.dataset) and not local:
            yield (
                f"dataset {self.dataset!r} is not known; choose one of {_choices(DATASETS)}, "
                "a local ImageFolder folder, an http(s):// zip URL or an s3:// prefix"
            )
        if self.backbone not in BACKBONES:
            yield f"backbone {self.backbone!r} is not known; choose one of {_choices(BACKBONES)}"
        if self.weights not in WEIGHTS and not Path(self.weights).expanduser().is_file():
            yield (
                f"weights {self.weights!r} is neither one of {_choices(WEIGHTS)} "
                "nor an existing local weights file"
            )
        if self.backend not in BACKENDS:
            yield f"backend {self.backend!r} is not known; choose one of {_choices(BACKENDS)}"
        if not isinstance(self.image_size, int) or not (self.image_size == 0 or 16 <= self.image_size <= 1024):
            yield f"image_size must be 0 (automatic) or an integer between 16 and 1024, got {self.image_size!r}"
        if not isinstance(self.seed, int) or self.seed < 0:
            yield f"seed must be a non-negative integer, got {self.seed!r}"
        if self.s3_prefix and not self.s3_prefix.startswith("s3://"):
            yield f"s3_prefix must look like s3://bucket/prefix, got {self.s3_prefix!r}"
        if self.backend == "sagemaker" and not self.s3_prefix:
            yield "backend 'sagemaker' needs s3_prefix (s3://bucket/prefix for data and artifacts)"
        if self.mlflow_arn and not re.fullmatch(r"arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:mlflow-[a-z-]+/\S+",
                                                self.mlflow_arn):
            yield ("mlflow_arn must be a SageMaker MLflow ARN, like "
                   f"arn:aws:sagemaker:us-east-1:111122223333:mlflow-tracking-server/NAME; got {self.mlflow_arn!r}")
        if self.synthetic_classes < 2 or self.synthetic_images < 5:
            yield "the synthetic dataset needs at least 2 classes and 5 images per class"

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir)

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown run parameter(s) {', '.join(unknown)}; known: {', '.join(cls.field_names())}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_mapping(cls, namespace: dict[str, Any]) -> RunConfig:
        """Build from a namespace that holds the fields among other names (a notebook's ``globals()``)."""
        return cls(**{k: namespace[k] for k in cls.field_names() if k in namespace})
