import shutil
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from PIL import Image

from helpers import data, plots
from helpers.config import RunConfig


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "folder, name",
    [("001.Affenpinscher", "Affenpinscher"), ("002.Afghan_hound", "Afghan hound"), ("7", "7"),
     ("10-cats", "cats"), ("Boston_terrier", "Boston terrier"), ("042.", "042.")],
)
def test_display_name(folder, name):
    assert data.display_name(folder) == name


def test_synthetic_layout(tmp_path):
    root = data.make_synthetic(tmp_path / "s", num_classes=3, images_per_class=10, modes=("RGB", "L", "RGBA"),
                               size=(20, 40, 24, 48), seed=3)
    classes = sorted(p.name for p in (root / "train").iterdir())
    assert classes == ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier"]
    counts = {s: sum(1 for f in (root / s).rglob("*") if f.is_file()) for s in ("train", "valid", "test")}
    assert counts == {"train": 18, "valid": 6, "test": 6}
    modes, sizes = set(), set()
    for f in (p for p in (root / "train").rglob("*") if p.is_file()):
        with Image.open(f) as im:
            modes.add(im.mode)
            sizes.add(im.size)
    assert modes == {"RGB", "L", "RGBA"}
    assert all(20 <= w <= 40 and 24 <= h <= 48 for w, h in sizes) and len(sizes) > 3


def test_synthetic_is_generated_once(tmp_path):
    root = data.make_synthetic(tmp_path / "s", num_classes=2, images_per_class=5)
    f = next((root / "train").rglob("*.jpg"))
    stamp = f.stat().st_mtime_ns
    data.make_synthetic(tmp_path / "s", num_classes=2, images_per_class=5)
    assert f.stat().st_mtime_ns == stamp
    data.make_synthetic(tmp_path / "s", num_classes=2, images_per_class=6)  # other parameters: regenerated
    assert sum(1 for _ in (root / "train").rglob("*.jpg")) > 6


def test_digits_export_is_stratified_and_seeded(tmp_path):
    a = data.export_digits(tmp_path / "a", seed=1, progress=False)
    report = data.validate_dataset(a, progress=False)
    assert report.usable and len(report.classes) == 10
    assert sum(s.total for s in report.splits.values()) == 1797
    assert {n: s.total for n, s in report.splits.items()} == {"train": 1437, "valid": 180, "test": 180}
    valid = report.splits["valid"].class_counts
    assert min(valid.values()) >= 17 and max(valid.values()) <= 19  # stratified: ~18 of each digit
    assert report.modes == {"L": 1797}

    def names(root):
        return sorted(p.name for p in (root / "test").rglob("*.png"))

    assert names(a) == names(data.export_digits(tmp_path / "b", seed=1, progress=False))
    assert names(a) != names(data.export_digits(tmp_path / "c", seed=2, progress=False))


def test_validate_clean(synthetic_root):
    r = data.validate_dataset(synthetic_root, progress=False)
    assert r.usable and not r.warnings
    assert r.classes == ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier"]
    assert r.class_names == ["Affenpinscher", "Afghan hound", "Airedale terrier"]
    assert r.splits["train"].class_counts == {c: 6 for c in r.classes}
    assert r.size_stats()["median"] == [32, 32]
    table = r.counts_table()
    assert table.loc["total", "train"] == 18 and list(table.columns) == ["train", "valid", "test"]
    assert r.split_table().loc["valid", "images"] == 6


@pytest.mark.reliability
def test_corrupt_and_non_image_files_are_skipped_and_counted(tmp_path, monkeypatch):
    root = data.make_synthetic(tmp_path / "s", num_classes=2, images_per_class=10, corrupt=2, non_image=1)
    cls = root / "train" / "001.Affenpinscher"
    (cls / "empty.png").write_bytes(b"")
    (cls / "noise.png").write_bytes(b"\x89PNG but not really")
    Image.new("L", (300, 300)).save(cls / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)  # makes bomb.png a decompression bomb
    r = data.validate_dataset(root, progress=False)
    assert r.usable
    bad = dict(r.corrupt)
    assert set(bad) == {f"train/001.Affenpinscher/{n}" for n in
                        ("corrupt_00.jpg", "corrupt_01.jpg", "empty.png", "noise.png", "bomb.png")}
    assert "too many pixels" in bad["train/001.Affenpinscher/bomb.png"]
    assert r.non_image == ["train/001.Affenpinscher/notes_00.txt"]
    assert r.splits["train"].class_counts["001.Affenpinscher"] == 6
    assert any("5 corrupt" in w for w in r.warnings)
    assert any("5 corrupt" in line for line in data.insights(r))
    rec = data.manifest_record(RunConfig(), r)
    assert len(rec["skip_files"]) == 5


def test_class_set_mismatch(tmp_path, synthetic_root):
    root = copy_tree(synthetic_root, tmp_path / "d")
    shutil.copytree(root / "valid" / "001.Affenpinscher", root / "valid" / "099.Wolf")
    shutil.rmtree(root / "test" / "002.Afghan_hound")
    r = data.validate_dataset(root, progress=False)
    assert r.class_mismatch == {"valid": {"extra": ["099.Wolf"], "missing": []},
                                "test": {"extra": [], "missing": ["002.Afghan_hound"]}}
    assert not r.usable
    with pytest.raises(data.DatasetError, match="099.Wolf"):
        r.raise_if_unusable()
    assert any("test has no folder for 1 train class" in w for w in r.warnings)


def test_unusable_data_lists_every_problem(tmp_path, synthetic_root):
    root = copy_tree(synthetic_root, tmp_path / "d")
    shutil.rmtree(root / "valid")
    for f in (root / "train" / "002.Afghan_hound").iterdir():
        f.unlink()
    r = data.validate_dataset(root, progress=False)
    with pytest.raises(data.DatasetError) as e:
        r.raise_if_unusable()
    msg = str(e.value)
    assert "no valid split" in msg and "002.Afghan_hound" in msg
    with pytest.raises(data.DatasetError):
        data.manifest_record(RunConfig(), r)


def test_single_class_is_unusable(tmp_path):
    root = data.make_synthetic(tmp_path / "s", num_classes=2, images_per_class=5)
    for split in ("train", "valid", "test"):
        shutil.rmtree(root / split / "002.Afghan_hound")
    r = data.validate_dataset(root, progress=False)
    assert any("at least 2" in p for p in r.problems)


def test_split_aliases_and_nested_root(tmp_path, synthetic_root):
    outer = tmp_path / "unzipped"
    root = copy_tree(synthetic_root, outer / "dogImages")
    (root / "valid").rename(root / "val")
    (outer / "__MACOSX").mkdir()
    assert data.find_imagefolder_root(outer) == root
    r = data.validate_dataset(outer, progress=False)
    assert r.usable and r.splits["valid"].folder.endswith("val")


def test_no_train_folder_is_a_clear_error(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(data.DatasetError, match="ROOT/train/CLASS/IMAGE"):
        data.find_imagefolder_root(tmp_path)
    with pytest.raises(data.DatasetError, match="does not exist"):
        data.find_imagefolder_root(tmp_path / "nope")


def test_insights_compute_imbalance(tmp_path, synthetic_root):
    root = copy_tree(synthetic_root, tmp_path / "d")
    for f in sorted((root / "train" / "003.Airedale_terrier").iterdir())[:4]:
        f.unlink()
    r = data.validate_dataset(root, progress=False)
    lines = data.insights(r, image_size=224)
    imbalance = next(line for line in lines if "Imbalance ratio" in line)
    assert "3.00" in imbalance and "Airedale terrier has 2" in imbalance and "strong imbalance" in imbalance
    assert any("224x224" in line for line in lines)
    assert any("No corrupt" in line for line in lines)


def test_prepare_dataset_sources(work_dir, synthetic_root):
    cfg = RunConfig(dataset="synthetic", work_dir=str(work_dir), synthetic_classes=2, synthetic_images=5)
    root = data.prepare_dataset(cfg)
    assert root.parent == work_dir / "datasets" and len(list((root / "train").iterdir())) == 2
    assert data.prepare_dataset(RunConfig(dataset=str(synthetic_root), work_dir=str(work_dir))) == synthetic_root


def test_plots(tmp_path, synthetic_root):
    r = data.validate_dataset(synthetic_root, progress=False)
    fig = plots.class_counts(r)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == r.class_names
    assert sum(p.get_height() for p in ax.patches) == 30
    grid = plots.sample_grid(r, per_class=3)
    assert len(grid.axes) == 9 and grid.axes[0].get_ylabel() == "Affenpinscher"
    assert all(ax.images for ax in grid.axes)
    assert plots.size_distribution(r) is None  # every synthetic image has one size: nothing to plot
    r.widths[0] += 1
    sizes = plots.size_distribution(r)
    for i, f in enumerate((fig, grid, sizes)):
        f.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").stat().st_size > 1000


@pytest.mark.reliability
def test_a_train_class_without_readable_images_is_not_called_balanced(tmp_path, synthetic_root):
    root = copy_tree(synthetic_root, tmp_path / "d")
    for f in (root / "train" / "001.Affenpinscher").iterdir():
        f.write_bytes(b"broken")
    r = data.validate_dataset(root, progress=False)
    assert not r.usable and any("no readable image: 001.Affenpinscher" in p for p in r.problems)
    text = "\n".join(data.insights(r))
    assert "balanced" not in text and "1 train class(es) have no readable image (Affenpinscher)" in text
