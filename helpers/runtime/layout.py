"""The ImageFolder layout shared by data preparation, training and serving (no heavy imports)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from helpers.runtime.settings import TrainingError

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


def class_folders(train_dir: Path) -> list[str]:
    """Labels: the sorted class-folder names of the train split (the ImageFolder rule)."""
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise TrainingError(f"{train_dir} has {len(classes)} class folder(s); classification needs at least 2")
    return classes


def list_samples(split_dir: Path, classes: Sequence[str]) -> list[tuple[str, int]]:
    """(path, label) for every image of a split, labelled with the train classes."""
    index = {c: i for i, c in enumerate(classes)}
    extra = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and d.name not in index and not d.name.startswith("."))
    if extra:
        raise TrainingError(f"{split_dir} has classes that train lacks: {', '.join(extra[:10])}")
    samples = []
    for cls in classes:
        folder = split_dir / cls
        if folder.is_dir():
            samples += [(str(p), index[cls]) for p in sorted(folder.rglob("*"))
                        if p.is_file() and is_image(p)]
    if not samples:
        raise TrainingError(f"{split_dir} holds no images")
    return samples
