"""Preprocessing presets: the single home of transforms and normalization, shared by training and serving."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects: it is stored in ``model_config.json`` so serving rebuilds the same preset."""

    image_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def for_size(cls, image_size: int) -> "Preprocessing":
        """The torchvision convention: resize to 256/224 of the crop, then centre-crop."""
        return cls(image_size=image_size, resize_size=round(image_size * 256 / 224))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        return cls(image_size=int(d["image_size"]), resize_size=int(d["resize_size"]),
                   mean=tuple(d["mean"]), std=tuple(d["std"]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped (lists, not tuples), so a dict read back from model_config.json compares equal."""
        d = asdict(self)
        return {**d, "mean": list(d["mean"]), "std": list(d["std"])}


def _to_rgb(img):
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_transform(p: Preprocessing) -> T.Compose:
    """The deterministic, cacheable half of :func:`eval_transform`: RGB, resize, centre crop, uint8 tensor."""
    return T.Compose([T.Lambda(_to_rgb), T.Resize(p.resize_size, antialias=True), T.CenterCrop(p.image_size),
                      T.PILToTensor()])


def normalize_transform(p: Preprocessing) -> T.Compose:
    """The other half: uint8 to float in [0, 1], then normalize; works on one image or a batch."""
    return T.Compose([T.ConvertImageDtype(torch.float32), T.Normalize(p.mean, p.std)])


def eval_transform(p: Preprocessing) -> T.Compose:
    """Deterministic: RGB, resize, centre crop, tensor, normalize. Used for valid/test and serving."""
    return T.Compose([*decode_transform(p).transforms, *normalize_transform(p).transforms])


def train_transform(p: Preprocessing, augment: bool) -> T.Compose:
    """With ``augment``: random resized crop and horizontal flip; without, the eval preset (deterministic)."""
    if not augment:
        return eval_transform(p)
    return T.Compose([
        T.Lambda(_to_rgb), T.RandomResizedCrop(p.image_size, scale=(0.5, 1.0), antialias=True),
        T.RandomHorizontalFlip(), T.PILToTensor(), *normalize_transform(p).transforms,
    ])
