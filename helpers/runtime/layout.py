"""The ImageFolder layout shared by data preparation, training and serving (no heavy imports)."""

from __future__ import annotations

import re
from pathlib import Path

#: Extensions torchvision's ImageFolder loads.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: Pillow modes with more than 8 bits per sample: ``convert("RGB")`` clips them (a 16-bit PNG turns white);
#: :func:`helpers.runtime.presets.to_rgb` scales them.
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")

#: Canonical split names and the folder names accepted for each.
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "valid": ("valid", "val", "validation"),
    "test": ("test", "testing"),
}

_PREFIX = re.compile(r"^\d+[._\-\s]+")


def display_name(folder: str) -> str:
    """Class name for people: ``001.Affenpinscher`` -> ``Affenpinscher``, ``002.Afghan_hound`` -> ``Afghan hound``."""
    name = _PREFIX.sub("", folder).replace("_", " ").strip()
    return name or folder


def find_split_dir(root: Path, split: str) -> Path | None:
    """The folder of ``split`` under ``root`` under any of its accepted names."""
    for name in SPLITS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMG_EXTENSIONS
