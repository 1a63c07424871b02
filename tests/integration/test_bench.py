"""The benchmark command in --quick mode, and the seed-style baseline really being the slow path."""

import json
import subprocess
import sys

import pytest
from torchvision import datasets, transforms

from helpers import bench

SECTIONS = ("training", "hpo", "serving", "overhead", "hardware", "emulator", "chapters")


@pytest.mark.slow
def test_quick_benchmark_json_has_every_section(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "helpers.bench", "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "SAGEBOOK_WORK_DIR": str(tmp_path / "work")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["quick"] is True and set(SECTIONS) <= set(doc)
    for section in SECTIONS[:-1]:
        assert doc[section], section
    train = doc["training"]
    assert all(r["images_per_s"] > 0 and 0 <= r["valid_accuracy"] <= 1 for r in train)
    assert len(train) == 4 and train[0]["speedup"] == train[2]["speedup"] == 1.0
    assert len({round(r["images_per_s"] * r["seconds"] / r["epochs"]) for r in train}) == 1  # same images
    assert train[1]["speedup"] == pytest.approx(train[1]["images_per_s"] / train[0]["images_per_s"])
    assert train[3]["speedup"] == pytest.approx(train[3]["images_per_s"] / train[2]["images_per_s"])
    hpo = doc["hpo"]
    assert [r["variant"] for r in hpo] == ["feature cache + pruning", "feature cache only", "no cache, no pruning"]
    assert all(r["speedup"] == pytest.approx(hpo[-1]["wall_s"] / r["wall_s"]) for r in hpo)
    serving = doc["serving"]
    floor = serving[0]["p50_ms"]
    assert floor > 0 and all(r["p50_vs_floor"] == pytest.approx(r["p50_ms"] / floor) for r in serving)
    assert all(r["req_per_s"] > 0 and r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] for r in serving)
    abused = {r["setup"]: r for r in serving if r.get("abuse")}  # a quarter of the requests bad, at concurrency 16
    assert set(abused) == {"pytorch container (TorchServe-style)", "ray-serve container"}, abused
    for r in abused.values():
        assert r["wrong"] == 0 and r["errors_5xx"] == 0 and abs(r["rss_change_pct"]) < 10, r
    over = {r["variant"]: r for r in doc["overhead"]}
    assert list(over) == ["off", "hook + profiler", bench.TRACKED]
    for variant in ("hook + profiler", bench.TRACKED):
        assert over[variant]["overhead_pct"] == pytest.approx(
            100 * (over[variant]["median_later_epoch_s"] / over["off"]["median_later_epoch_s"] - 1))
        assert over[variant]["first_epoch_overhead_pct"] == pytest.approx(
            100 * (over[variant]["first_epoch_s"] / over["off"]["first_epoch_s"] - 1))
    hw = doc["hardware"]
    limits = {r["precision"]: r["gflop_per_s"] for r in hw if r["measure"].startswith("matmul")}
    assert limits["float32"] > 0 and len(hw) == len(limits) + 2
    assert all(r["share_of_limit"] == pytest.approx(r["gflop_per_s"] / limits[r["precision"]]) for r in hw)
    emulator = doc["emulator"]
    assert [r["measure"].split(" ")[0] for r in emulator] == ["training", "training", "invoke_endpoint"]
    assert all(r["direct_ms"] > 0 and r["added_ms"] == pytest.approx(r["emulator_ms"] - r["direct_ms"])
               for r in emulator)
    assert "== training ==" in proc.stdout


def test_the_baseline_is_the_slow_path(synthetic_root):
    r = bench.seed_style_training(synthetic_root, "resnet18", 32, epochs=1)
    loader = r["loader"]
    assert loader.num_workers == 0  # decoding in the main process
    assert isinstance(loader.dataset, datasets.ImageFolder)  # files decoded on every access, nothing cached
    steps = [type(t) for t in loader.dataset.transform.transforms]
    assert transforms.Resize in steps and transforms.PILToTensor in steps  # resized every epoch
    assert r["images_per_s"] > 0 and 0 <= r["valid_accuracy"] <= 1
