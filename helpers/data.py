"""Datasets as ImageFolder trees: sources, the validation report, and the facts the chapter prints.

A dataset is a folder ``ROOT/{train,valid,test}/CLASS/IMAGE``. Labels are the sorted class-folder
names of the train split (the torchvision ``ImageFolder`` rule); people see :func:`display_name`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import statistics
import warnings
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from helpers.config import RunConfig
from helpers.download import download, safe_extract_zip
from helpers.runtime.fileio import atomic_write_json
from helpers.runtime.layout import HIGH_BIT_MODES, IMG_EXTENSIONS, SPLITS, display_name, find_split_dir
from helpers.runtime.progress import bar

log = logging.getLogger(__name__)

DOG_IMAGES_URL = "https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip"

REQUIRED_SPLITS = ("train", "valid")

COMPLETE_MARKER = ".sagebook-complete.json"



class DatasetError(ValueError):
    """The dataset cannot be used; the message lists every problem found."""


# --------------------------------------------------------------------------------------------------
# Sources


def _finished(root: Path, params: dict[str, Any]) -> bool:
    marker = root / COMPLETE_MARKER
    try:
        return json.loads(marker.read_text()) == params
    except (OSError, ValueError):
        return False


def _publish(tmp: Path, root: Path, params: dict[str, Any]) -> Path:
    """Mark ``tmp`` complete and move it to ``root`` in one rename."""
    atomic_write_json(tmp / COMPLETE_MARKER, params)
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)
    return root


def _fresh_tmp(root: Path) -> Path:
    tmp = root.with_name(f".{root.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Split ``n`` items into train/valid/test with at least one in each."""
    n_valid = max(1, round(n * fractions[1]))
    n_test = max(1, round(n * fractions[2]))
    return n - n_valid - n_test, n_valid, n_test


def export_digits(
    root: str | os.PathLike[str],
    *,
    seed: int = 42,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    size: int = 32,
    progress: bool = True,
) -> Path:
    """Export scikit-learn's bundled handwritten digits (1,797 images, 10 classes) as an ImageFolder.

    The split is stratified and seeded; images are 8x8 scans upscaled to ``size`` pixels, dark ink on
    white. The export happens once: a later call with the same parameters returns the folder as is.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = Path(root)
    params = {"source": "digits", "seed": seed, "fractions": list(fractions), "size": size}
    if _finished(root, params):
        return root
    digits = load_digits()
    idx = np.arange(len(digits.target))
    holdout = fractions[1] + fractions[2]
    train_idx, rest = train_test_split(idx, test_size=holdout, stratify=digits.target, random_state=seed)
    valid_idx, test_idx = train_test_split(
        rest, test_size=fractions[2] / holdout, stratify=digits.target[rest], random_state=seed
    )
    tmp = _fresh_tmp(root)
    jobs = [(s, i) for s, ids in (("train", train_idx), ("valid", valid_idx), ("test", test_idx)) for i in ids]
    for split, i in bar(jobs, desc="export digits", unit="img", progress=progress):
        pixels = (255 - digits.images[i] * (255 / 16)).clip(0, 255).astype(np.uint8)
        folder = tmp / split / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BICUBIC).save(
            folder / f"digit_{i:04d}.png"
        )
    return _publish(tmp, root, params)


BREEDS = (
    "Affenpinscher", "Afghan_hound", "Airedale_terrier", "Akita", "Alaskan_malamute",
    "American_eskimo_dog", "American_foxhound", "American_staffordshire_terrier",
    "American_water_spaniel", "Anatolian_shepherd_dog", "Australian_cattle_dog", "Australian_shepherd",
)


def _pattern(label: int, n_classes: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 image whose colour and stripe direction depend on the class: easy to learn."""
    w, h = size
    hue = label / n_classes
    base = np.array([np.sin(2 * np.pi * (hue + k / 3)) * 0.5 + 0.5 for k in range(3)]) * 255
    yy, xx = np.mgrid[0:h, 0:w]
    angle = np.pi * (label % 4) / 4
    stripes = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / max(4, min(w, h) / 4)) > 0)
    img = base[None, None, :] * (0.6 + 0.4 * stripes[..., None]) + rng.normal(0, 12, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8)


def make_synthetic(
    root: str | os.PathLike[str],
    *,
    num_classes: int = 4,
    images_per_class: int = 20,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    size: tuple[int, int] | tuple[int, int, int, int] = (32, 32),
    modes: Iterable[str] = ("RGB",),
    corrupt: int = 0,
    non_image: int = 0,
    fmt: str = "JPEG",
    seed: int = 0,
) -> Path:
    """Generate a small ImageFolder for tests: ``num_classes`` x ``images_per_class`` images.

    Folders are named like the dog-breed set (``001.Affenpinscher``). ``size`` is ``(w, h)`` or a
    range ``(min_w, max_w, min_h, max_h)``; ``modes`` cycle over images (``RGB``, ``L``, ``RGBA``);
    ``corrupt`` truncated JPEGs and ``non_image`` text files go into the first training class.
    """
    root = Path(root)
    modes = tuple(modes)
    params = {
        "source": "synthetic", "num_classes": num_classes, "images_per_class": images_per_class,
        "fractions": list(fractions), "size": list(size), "modes": list(modes), "corrupt": corrupt,
        "non_image": non_image, "fmt": fmt, "seed": seed,
    }
    if _finished(root, params):
        return root
    rng = np.random.default_rng(seed)
    tmp = _fresh_tmp(root)
    ext = {"JPEG": "jpg", "PNG": "png"}[fmt]
    n = 0
    for label in range(num_classes):
        breed = BREEDS[label % len(BREEDS)] + (f"_{label // len(BREEDS)}" if label >= len(BREEDS) else "")
        folder_name = f"{label + 1:03d}.{breed}"
        counts = _split_counts(images_per_class, fractions)
        for split, count in zip(("train", "valid", "test"), counts):
            folder = tmp / split / folder_name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                if len(size) == 4:
                    wh = (int(rng.integers(size[0], size[1] + 1)), int(rng.integers(size[2], size[3] + 1)))
                else:
                    wh = (int(size[0]), int(size[1]))
                img = Image.fromarray(_pattern(label, num_classes, wh, rng)).convert(modes[n % len(modes)])
                save_fmt = "PNG" if img.mode == "RGBA" else fmt
                img.save(folder / f"{breed}_{j:05d}.{'png' if save_fmt == 'PNG' else ext}", save_fmt)
                n += 1
    first = tmp / "train" / f"001.{BREEDS[0]}"
    for k in range(corrupt):
        buf = io.BytesIO()
        Image.fromarray(_pattern(0, num_classes, (64, 64), rng)).save(buf, "JPEG")
        (first / f"corrupt_{k:02d}.jpg").write_bytes(buf.getvalue()[: buf.tell() // 3])  # truncated
    for k in range(non_image):
        (first / f"notes_{k:02d}.txt").write_text("not an image\n")
    return _publish(tmp, root, params)


def find_imagefolder_root(path: str | os.PathLike[str], max_depth: int = 2) -> Path:
    """The folder at or under ``path`` that holds the ``train`` split (zips often add a top folder)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DatasetError(f"Dataset folder {path} does not exist.")
    frontier = [path]
    for _ in range(max_depth + 1):
        for d in frontier:
            if find_split_dir(d, "train") is not None:
                return d
        frontier = [c for d in frontier for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith((".", "__"))]
    raise DatasetError(
        f"No train/ folder found in {path} (looked {max_depth} levels down). "
        "Expected the ImageFolder layout ROOT/train/CLASS/IMAGE, ROOT/valid/CLASS/IMAGE, ROOT/test/CLASS/IMAGE."
    )


def fetch_zip(url: str, work_dir: Path, *, sha256: str | None = None, progress: bool = True) -> Path:
    """Download a zipped ImageFolder once into ``work_dir`` and return its root."""
    name = Path(url.split("?")[0]).name or "dataset.zip"
    dest = work_dir / "datasets" / Path(name).stem
    if not _finished(dest, {"source": url}):
        archive = download(url, work_dir / "downloads" / name, sha256=sha256 or None, progress=progress)
        safe_extract_zip(archive, dest, progress=progress)
        atomic_write_json(dest / COMPLETE_MARKER, {"source": url})
    return find_imagefolder_root(dest)


def prepare_dataset(cfg: RunConfig, *, progress: bool = True) -> Path:
    """Make ``cfg.dataset`` available as a local ImageFolder and return its root."""
    work = cfg.work_path
    if cfg.dataset == "digits":
        return export_digits(work / "datasets" / "digits", seed=cfg.seed, progress=progress)
    if cfg.dataset == "synthetic":
        name = f"synthetic-{cfg.synthetic_classes}x{cfg.synthetic_images}-seed{cfg.seed}"
        return make_synthetic(
            work / "datasets" / name, num_classes=cfg.synthetic_classes,
            images_per_class=cfg.synthetic_images, seed=cfg.seed,
        )
    if cfg.dataset == "dogImages":
        return fetch_zip(DOG_IMAGES_URL, work, sha256=cfg.sha256, progress=progress)
    if cfg.dataset.startswith(("http://", "https://")):
        return fetch_zip(cfg.dataset, work, sha256=cfg.sha256, progress=progress)
    if cfg.dataset.startswith("s3://"):
        from helpers.s3 import parse_s3_uri, sync_from_s3

        bucket, prefix = parse_s3_uri(cfg.dataset)
        dest = work / "datasets" / re.sub(r"[^A-Za-z0-9._-]+", "-", f"s3-{bucket}-{prefix}").strip("-")
        sync_from_s3(cfg.dataset, dest, progress=progress)
        return find_imagefolder_root(dest)
    return find_imagefolder_root(cfg.dataset)


# --------------------------------------------------------------------------------------------------
# Validation report


@dataclass
class ImageCheck:
    """What opening one file found: its size and mode, or why it is unusable."""

    path: Path
    size: tuple[int, int] | None = None
    mode: str | None = None
    error: str | None = None


def check_image(path: Path) -> ImageCheck:
    """Open and fully decode one image; never raises for a bad file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                size, mode = im.size, im.mode
                if im.format == "JPEG":
                    im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))  # fast, still decodes every block
                im.load()
        return ImageCheck(path, size=size, mode=mode)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return ImageCheck(path, error=f"refused, too many pixels ({e})")
    except Exception as e:  # PIL raises many types for bad data; none may escape the report
        return ImageCheck(path, error=f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)


@dataclass
class SplitReport:
    name: str
    folder: str
    class_counts: dict[str, int] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict, repr=False)
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    non_image: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    stray_files: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.class_counts.values())


@dataclass
class DatasetReport:
    """Everything the validation pass found; ``problems`` make the dataset unusable."""

    root: str
    splits: dict[str, SplitReport]
    classes: list[str]
    class_mismatch: dict[str, dict[str, list[str]]]
    modes: dict[str, int]
    widths: list[int] = field(repr=False)
    heights: list[int] = field(repr=False)
    problems: list[str]
    warnings: list[str]

    @property
    def usable(self) -> bool:
        return not self.problems

    @property
    def class_names(self) -> list[str]:
        return [display_name(c) for c in self.classes]

    @property
    def corrupt(self) -> list[tuple[str, str]]:
        return [c for s in self.splits.values() for c in s.corrupt]

    @property
    def non_image(self) -> list[str]:
        return [f for s in self.splits.values() for f in s.non_image]

    def raise_if_unusable(self) -> None:
        if self.problems:
            raise DatasetError(
                f"The dataset at {self.root} cannot be used:\n  - " + "\n  - ".join(self.problems)
            )

    def size_stats(self) -> dict[str, Any]:
        if not self.widths:
            return {}
        return {
            "min": [min(self.widths), min(self.heights)],
            "median": [statistics.median(self.widths), statistics.median(self.heights)],
            "max": [max(self.widths), max(self.heights)],
        }

    def counts_table(self):
        """Images per class (rows) and split (columns) as a pandas DataFrame, with a total row."""
        import pandas as pd

        df = pd.DataFrame(
            {s.name: pd.Series(s.class_counts, dtype="int64") for s in self.splits.values()}
        ).reindex(self.classes).fillna(0).astype(int)
        df.index = [f"{c} ({display_name(c)})" if display_name(c) != c else c for c in df.index]
        df.index.name = "class"
        df.loc["total"] = df.sum()
        return df

    def split_table(self):
        """One row per split: classes, images, images per class, corrupt and non-image files."""
        import pandas as pd

        rows = {}
        for name, s in self.splits.items():
            per_class = list(s.class_counts.values()) or [0]
            rows[name] = {
                "classes": len(s.class_counts), "images": s.total, "min/class": min(per_class),
                "median/class": statistics.median(per_class), "max/class": max(per_class),
                "empty classes": len(s.empty_classes), "corrupt": len(s.corrupt), "non-image": len(s.non_image),
            }
        return pd.DataFrame.from_dict(rows, orient="index")

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest (no per-file lists) for the manifest and the book."""
        return {
            "root": self.root,
            "classes": len(self.classes),
            "images": {n: s.total for n, s in self.splits.items()},
            "corrupt": len(self.corrupt),
            "non_image": len(self.non_image),
            "modes": self.modes,
            "size": self.size_stats(),
            "problems": self.problems,
            "warnings": self.warnings,
        }


def _scan_split(name: str, folder: Path) -> tuple[SplitReport, list[Path]]:
    """List class folders and their files; images are returned for checking, the rest recorded."""
    rep = SplitReport(name=name, folder=str(folder))
    images: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file():
            rep.stray_files.append(entry.name)
            continue
        rep.class_counts[entry.name] = 0
        for f in sorted(p for p in entry.rglob("*") if p.is_file()):
            if f.suffix.lower() in IMG_EXTENSIONS:
                images.append(f)
            else:
                rep.non_image.append(str(f.relative_to(folder.parent)))
    return rep, images


def validate_dataset(root: str | os.PathLike[str], *, progress: bool = True, workers: int | None = None) -> DatasetReport:
    """Check every split, class and image under ``root``; return the report (never raises for bad data)."""
    root = find_imagefolder_root(root)
    splits: dict[str, SplitReport] = {}
    problems: list[str] = []
    warns: list[str] = []
    to_check: list[tuple[str, Path]] = []
    for split in SPLITS:
        folder = find_split_dir(root, split)
        if folder is None:
            msg = f"no {split} split (a folder named {' or '.join(SPLITS[split])})"
            (problems if split in REQUIRED_SPLITS else warns).append(msg)
            continue
        rep, images = _scan_split(split, folder)
        splits[split] = rep
        to_check += [(split, p) for p in images]

    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    modes: Counter[str] = Counter()
    widths: list[int] = []
    heights: list[int] = []
    with ThreadPoolExecutor(workers) as pool:
        checks = pool.map(check_image, (p for _, p in to_check), chunksize=16)
        for (split, path), chk in bar(
            zip(to_check, checks), total=len(to_check), desc="check images", unit="img", progress=progress
        ):
            rep = splits[split]
            rel = str(path.relative_to(root))
            cls = path.relative_to(rep.folder).parts[0]
            if chk.error:
                rep.corrupt.append((rel, chk.error))
                continue
            rep.class_counts[cls] += 1
            rep.files.setdefault(cls, []).append(rel)
            modes[chk.mode or "?"] += 1
            widths.append(chk.size[0])
            heights.append(chk.size[1])

    for rep in splits.values():
        rep.empty_classes = [c for c, n in rep.class_counts.items() if n == 0]
        if rep.stray_files:
            warns.append(f"{rep.name}: {len(rep.stray_files)} file(s) outside any class folder ignored")

    classes = sorted(splits["train"].class_counts) if "train" in splits else []
    mismatch: dict[str, dict[str, list[str]]] = {}
    if "train" in splits:
        train = splits["train"]
        if len(classes) < 2:
            problems.append(f"train has {len(classes)} class folder(s); classification needs at least 2")
        if train.empty_classes:
            problems.append(f"train has classes with no readable image: {', '.join(train.empty_classes)}")
        for name, rep in splits.items():
            if name == "train":
                continue
            extra = sorted(set(rep.class_counts) - set(classes))
            missing = sorted(set(classes) - set(rep.class_counts))
            if extra or missing:
                mismatch[name] = {"extra": extra, "missing": missing}
            if extra:
                problems.append(f"{name} has classes that train lacks (they could not be labelled): {', '.join(extra)}")
            if missing:
                warns.append(f"{name} has no folder for {len(missing)} train class(es): {', '.join(missing[:10])}")
            empty = [c for c in rep.empty_classes if c in classes]
            if empty:
                warns.append(f"{name} has classes with no readable image: {', '.join(empty[:10])}")
    for name, rep in splits.items():
        if rep.total == 0 and name in REQUIRED_SPLITS:
            problems.append(f"{name} holds no readable image")
    n_corrupt = sum(len(r.corrupt) for r in splits.values())
    if n_corrupt:
        warns.append(f"{n_corrupt} corrupt or unreadable image(s) will be skipped")
    n_other = sum(len(r.non_image) for r in splits.values())
    if n_other:
        warns.append(f"{n_other} non-image file(s) will be ignored")
    return DatasetReport(
        root=str(root), splits=splits, classes=classes, class_mismatch=mismatch, modes=dict(modes),
        widths=widths, heights=heights, problems=problems, warnings=warns,
    )


# --------------------------------------------------------------------------------------------------
# What the chapter prints and hands on


def insights(report: DatasetReport, image_size: int | None = None) -> list[str]:
    """Plain-language findings computed from the report."""
    out: list[str] = []
    totals = {n: s.total for n, s in report.splits.items()}
    all_images = sum(totals.values())
    if all_images:
        parts = " / ".join(f"{n} {c:,} ({100 * c / all_images:.0f}%)" for n, c in totals.items())
        out.append(f"{all_images:,} readable images in {len(report.classes)} classes: {parts}.")
    train = report.splits.get("train")
    empty = [c for c, n in train.class_counts.items() if n == 0] if train else []
    if empty:  # no balance to speak of: a class the model would never see
        out.append(f"{len(empty)} train class(es) have no readable image ({', '.join(map(display_name, empty[:5]))}"
                   f"{' ...' if len(empty) > 5 else ''}): the dataset cannot be trained on as it is.")
    elif train and train.total and len(train.class_counts) >= 2:
        counts = train.class_counts
        big = max(counts, key=counts.get)
        small = min(counts, key=counts.get)
        ratio = counts[big] / max(1, counts[small])
        verdict = (
            "the classes are balanced" if ratio < 1.5
            else "mild imbalance: accuracy is still a fair summary" if ratio < 3
            else "strong imbalance: watch per-class accuracy and the class_imbalance rule in chapter 3"
        )
        if counts[big] == counts[small]:
            out.append(f"Every train class has {counts[big]} images: the classes are perfectly balanced.")
        else:
            out.append(
                f"Imbalance ratio {ratio:.2f} in train: the largest class {display_name(big)} has {counts[big]} "
                f"images, the smallest {display_name(small)} has {counts[small]} ({verdict})."
            )
    corrupt = report.corrupt
    if corrupt:
        shown = ", ".join(p for p, _ in corrupt[:3])
        out.append(f"{len(corrupt)} corrupt or unreadable file(s) found and skipped (e.g. {shown}).")
    else:
        out.append("No corrupt or unreadable images were found.")
    if report.non_image:
        out.append(f"{len(report.non_image)} non-image file(s) sit among the images and are ignored.")
    if report.modes:
        modes = ", ".join(f"{m} ({n:,})" for m, n in sorted(report.modes.items(), key=lambda kv: -kv[1]))
        note = "" if set(report.modes) == {"RGB"} else "; preprocessing converts every image to RGB"
        out.append(f"Image modes: {modes}{note}.")
        high = {m: n for m, n in report.modes.items() if m in HIGH_BIT_MODES}
        if high:
            out.append(f"{sum(high.values()):,} image(s) have more than 8 bits per sample "
                       f"({', '.join(sorted(high))}): preprocessing scales them to 8 bits rather than clipping them "
                       "(Pillow's plain conversion would turn them white).")
    stats = report.size_stats()
    if stats:
        fmt = lambda wh: f"{wh[0]:g}x{wh[1]:g}"
        resize = f"; every image is resized to {image_size}x{image_size} for the model" if image_size else ""
        out.append(f"Sizes range from {fmt(stats['min'])} to {fmt(stats['max'])} (median {fmt(stats['median'])}){resize}.")
    for m in report.class_mismatch.values():
        if m["missing"]:
            out.append(f"Some splits lack {len(m['missing'])} train class(es); their metrics will be missing there.")
            break
    return out


def manifest_record(cfg: RunConfig, report: DatasetReport, s3_uri: str | None = None) -> dict[str, Any]:
    """What the data chapter hands to the next ones through the manifest."""
    report.raise_if_unusable()
    return {
        "dataset": cfg.dataset,
        "root": report.root,
        "splits": {n: s.folder for n, s in report.splits.items()},
        "class_folders": report.classes,
        "class_names": report.class_names,
        "counts": {n: s.total for n, s in report.splits.items()},
        "skip_files": sorted(p for p, _ in report.corrupt),
        "s3_uri": s3_uri,
    }


def require_uploaded(boto_session: Any, record: dict[str, Any]) -> None:
    """Check that the data stage's S3 copy is still there (a new local SageMaker starts with an empty S3)."""
    from helpers.session import require_in_s3

    uri = record.get("s3_uri")
    require_in_s3(boto_session, f"{uri.rstrip('/')}/" if uri else None, "01_data")


def upload_dataset(cfg: RunConfig, report: DatasetReport, *, client: Any | None = None,
                   progress: bool = True) -> str:
    """Sync the dataset to ``{s3_prefix}/data/{name}`` (new and changed files only) and return that URI."""
    from helpers.s3 import sync_to_s3

    uri = f"{cfg.s3_prefix.rstrip('/')}/data/{Path(report.root).name}"
    result = sync_to_s3(report.root, uri, client=client, progress=progress)
    log.info("Synced %s to %s: %s", report.root, uri, result)
    return uri
