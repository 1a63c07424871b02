"""Preprocessing presets: the single home of transforms and normalization, shared by training and serving."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torchvision import transforms as T

from helpers.runtime.catalog import NORMALIZATION
from helpers.runtime.layout import HIGH_BIT_MODES

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
    def for_size(cls, image_size: int, backbone: str = "") -> "Preprocessing":
        """The torchvision convention: resize to 256/224 of the crop, then centre-crop; normalized as the
        backbone's pretrained weights expect (ImageNet's mean and std unless the catalog says otherwise)."""
        mean, std = NORMALIZATION.get(backbone, (IMAGENET_MEAN, IMAGENET_STD))
        return cls(image_size=image_size, resize_size=round(image_size * 256 / 224), mean=mean, std=std)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        return cls(image_size=int(d["image_size"]), resize_size=int(d["resize_size"]),
                   mean=tuple(d["mean"]), std=tuple(d["std"]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-shaped (lists, not tuples), so a dict read back from model_config.json compares equal."""
        d = asdict(self)
        return {**d, "mean": list(d["mean"]), "std": list(d["std"])}




def to_rgb(img):
    """An 8-bit RGB image. High-bit-depth grey images (16-bit PNGs, 32-bit integer or float TIFFs) are scaled
    to 8 bits (16-bit data by 257, wider integers and floats above 1 by their maximum, floats in [0, 1] by
    255) instead of clipped; everything else converts as Pillow converts it."""
    if img.mode == "RGB":
        return img
    if img.mode not in HIGH_BIT_MODES:
        return img.convert("RGB")
    import numpy as np
    from PIL import Image

    a = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        top = 65535.0
    elif img.mode == "F":
        top = 1.0 if a.size == 0 or np.nanmax(a) <= 1.0 else float(np.nanmax(a))
    else:  # "I": 32-bit integers holding 8- or 16-bit data (a TIFF, an older Pillow's 16-bit PNG), or more
        peak = float(np.max(a)) if a.size else 0.0
        top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    grey = np.clip(np.nan_to_num(a) * (255.0 / max(top, 1e-12)), 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")  # uint8, 2-D: mode L


def decode_transform(p: Preprocessing) -> T.Compose:
    """The deterministic, cacheable half of :func:`eval_transform`: RGB, resize, centre crop, uint8 tensor."""
    return T.Compose([T.Lambda(to_rgb), T.Resize(p.resize_size, antialias=True), T.CenterCrop(p.image_size),
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
        T.Lambda(to_rgb), T.RandomResizedCrop(p.image_size, scale=(0.5, 1.0), antialias=True),
        T.RandomHorizontalFlip(), T.PILToTensor(), *normalize_transform(p).transforms,
    ])
