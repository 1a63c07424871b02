"""Benchmarks: comparisons measured side by side in one run, printed as a table.

    python -m helpers.bench [--quick] [--json PATH]       # every comparison of the performance appendix
    python -m helpers.bench hpo [--trials 8] [--dataset digits] [--backbone resnet18] [--json PATH]
    python -m helpers.bench overhead [--epochs 2] [--rounds 2]
    python -m helpers.bench serving [--model-dir DIR] [--requests 48]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from helpers.config import RunConfig


def bench_hpo(cfg: RunConfig, trials: int) -> list[dict[str, Any]]:
    """Tuning wall time and best objective: feature cache + pruning vs neither, same trials and seed."""
    from helpers import data, hpo

    root = data.prepare_dataset(cfg, progress=False)
    record = data.manifest_record(cfg, data.validate_dataset(root, progress=False))
    rows = []
    variants = [("feature cache + pruning", True, True), ("no cache, no pruning", False, False)]
    with tempfile.TemporaryDirectory(prefix="sagebook-bench-") as tmp:
        for label, cache, prune in variants:
            run_cfg = cfg.replace(work_dir=str(Path(tmp) / label.replace(" ", "_").replace(",", "")))
            t0 = time.perf_counter()
            r = hpo.tune_local(run_cfg, record, n_trials=trials, prune=prune, feature_cache=cache,
                               study_name="bench")
            wall = time.perf_counter() - t0
            rows.append({"variant": label, "trials": trials, "wall_s": wall, "best_objective": r.best_value,
                         "pruned": r.details["pruned"]})
    base = rows[-1]["wall_s"]
    for row in rows:
        row["speedup"] = base / row["wall_s"]
    return rows


def bench_overhead(cfg: RunConfig, epochs: int = 2, rounds: int = 2) -> list[dict[str, Any]]:
    """Epoch time with the Debugger hook and the profiler on (default intervals) vs off, interleaved."""
    import statistics

    from helpers import data
    from helpers.debugger import Instrumentation
    from helpers.train import JobPaths, TrainConfig, fit

    root = data.prepare_dataset(cfg, progress=False)
    tc = TrainConfig(backbone=cfg.backbone, weights=cfg.weights, image_size=cfg.image_size, epochs=epochs,
                     patience=0, use_feature_cache=False, batch_size=32)
    variants = {"off": Instrumentation(), "hook + profiler": Instrumentation(debugger=True, profiler=True)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory(prefix="sagebook-bench-") as tmp:
        for r in range(rounds):
            for label, inst in variants.items():
                out = Path(tmp) / f"{label.replace(' ', '')}-{r}"
                paths = JobPaths(root / "train", root / "valid", None, out / "model", out / "output", None)
                res = fit(tc, paths, instruments=inst, emit=lambda line: None, write_artifacts=False)
                times[label] += [h["seconds"] for h in res.history]
    base = statistics.median(times["off"])
    return [{"variant": k, "epochs": len(v), "median_epoch_s": statistics.median(v),
             "overhead_pct": 100 * (statistics.median(v) / base - 1)} for k, v in times.items()]


def seed_style_training(root: Path, backbone: str, image_size: int, epochs: int, lr: float = 1e-3,
                        batch_size: int = 32, trainable: bool = False) -> dict[str, Any]:
    """The seed projects' loop: ImageFolder decoding and resizing every JPEG every epoch, ``num_workers=0``,
    fp32, no caching, the (frozen or trainable) backbone run on every batch of every epoch."""
    import torch
    from torch import nn
    from torchvision import datasets

    from helpers.models import ModelConfig, build_model
    from helpers.presets import Preprocessing, eval_transform

    start = time.perf_counter()  # like ours, the time includes building the model and the loaders
    prep = Preprocessing.for_size(image_size)
    train = datasets.ImageFolder(str(root / "train"), transform=eval_transform(prep))
    valid = datasets.ImageFolder(str(root / "valid"), transform=eval_transform(prep))
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=0)
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone, num_classes=len(train.classes)), freeze_backbone=not trainable)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    crit = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(valid, batch_size=64, num_workers=0):
            correct += (model(x).argmax(1) == y).sum().item()
    return {"images_per_s": len(train) * epochs / seconds, "valid_accuracy": correct / len(valid),
            "seconds": seconds, "loader": loader}


def bench_training(root: Path, backbone: str, image_size: int, epochs: int) -> list[dict[str, Any]]:
    """Training throughput and accuracy: the seed-style loop vs ours, with the backbone trainable and frozen.

    Ours: loader workers and channels-last convolutions; with a frozen backbone, the feature cache.
    Each time includes building the model and the loaders (and, for ours, computing the features).
    """
    from helpers.train import JobPaths, TrainConfig, fit

    n_train = sum(1 for p in (root / "train").rglob("*") if p.is_file())
    rows = []
    with tempfile.TemporaryDirectory(prefix="sagebook-bench-") as tmp:
        for trainable in (True, False):
            kind = "trainable" if trainable else "frozen"
            base = seed_style_training(root, backbone, image_size, epochs, trainable=trainable)
            rows.append({"variant": f"seed-style, {kind} backbone (decode every epoch, 0 workers, fp32)",
                         "images_per_s": base["images_per_s"], "valid_accuracy": base["valid_accuracy"],
                         "speedup": 1.0})
            paths = JobPaths(root / "train", root / "valid", None, Path(tmp) / "m", Path(tmp) / "o", None)
            t0 = time.perf_counter()
            res = fit(TrainConfig(backbone=backbone, image_size=image_size, epochs=epochs, patience=0, lr=1e-3,
                                  batch_size=32, freeze_backbone=not trainable, use_feature_cache=not trainable),
                      paths, emit=lambda line: None, write_artifacts=False)
            ips = n_train * epochs / (time.perf_counter() - t0)
            label = "workers, channels-last" if trainable else "feature cache"
            rows.append({"variant": f"ours, {kind} backbone ({label})", "images_per_s": ips,
                         "valid_accuracy": res.best_valid["accuracy"], "speedup": ips / base["images_per_s"]})
    return rows


def bench_hardware(backbone: str, image_size: int, batch_size: int = 32) -> list[dict[str, Any]]:
    """The machine's matmul GFLOP/s next to a training step's achieved GFLOP/s (FLOPs counted by torch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from helpers.models import ModelConfig, build_model

    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    reps, t0 = 10, time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b)
    peak = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9
    rows = [{"measure": f"matmul {n}x{n} fp32 (the machine's limit)", "gflop_per_s": peak, "share_of_limit": 1.0}]
    for label, frozen in (("training step, trainable backbone", False), ("training step, frozen backbone", True)):
        model = build_model(ModelConfig(backbone, num_classes=10), freeze_backbone=frozen)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
        x, y = torch.randn(batch_size, 3, image_size, image_size), torch.randint(0, 10, (batch_size,))

        def step() -> None:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        step()
        t0 = time.perf_counter()
        for _ in range(3):
            step()
        achieved = flops * 3 / (time.perf_counter() - t0) / 1e9
        rows.append({"measure": f"{label} ({backbone}, {image_size}px, batch {batch_size})",
                     "gflop_per_s": achieved, "share_of_limit": achieved / peak})
    return rows


def chapter_times(root: Path | None = None) -> list[dict[str, Any]]:
    """Wall time of each chapter in the latest ``make book`` (written by :mod:`helpers.book`)."""
    from helpers.book import ROOT, TIMINGS

    path = (root or ROOT) / "_build" / TIMINGS
    if not path.is_file():
        return []
    doc = json.loads(path.read_text())
    rows = [{"chapter": k, "seconds": v} for k, v in doc["chapters"].items()]
    rows.append({"chapter": "all chapters", "seconds": sum(doc["chapters"].values())})
    return rows


def run_all(quick: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Every comparison of the performance appendix, measured in this run (``quick``: CI-sized)."""
    from helpers import data

    cfg = RunConfig(dataset="synthetic" if quick else "digits", synthetic_classes=4, synthetic_images=20)
    root = data.prepare_dataset(cfg, progress=False)
    return {
        "training": bench_training(root, cfg.backbone, cfg.image_size, 1 if quick else 2),
        "hpo": bench_hpo(cfg, 3 if quick else 8),
        "serving": bench_serving(None, 12 if quick else 48, levels=(1, 4) if quick else (1, 4, 16),
                                 worker_counts=(1,) if quick else (1, 2)),
        "overhead": bench_overhead(cfg, 1, 1 if quick else 2),
        "hardware": bench_hardware(cfg.backbone, cfg.image_size),
        "chapters": chapter_times(),
    }


def _percentiles(ms: list[float]) -> dict[str, float]:
    import numpy as np

    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99))}


def _quick_model(work: Path) -> Path:
    """A small model trained on the synthetic set, when no trained model is at hand."""
    from helpers import data
    from helpers.train import JobPaths, TrainConfig, fit

    root = data.make_synthetic(work / "synthetic", num_classes=4, images_per_class=12)
    paths = JobPaths(root / "train", root / "valid", None, work / "model", work / "output", None)
    fit(TrainConfig(image_size=64, epochs=1, batch_size=16, num_workers=0), paths, emit=lambda line: None)
    return work / "model"


def bench_serving(model_dir: Path | None, requests: int = 48, levels: tuple[int, ...] = (1, 4, 16),
                  worker_counts: tuple[int, ...] = (1, 2)) -> list[dict[str, Any]]:
    """In-process handler time (the floor) vs the local endpoint's latency by concurrency and workers."""
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    import psutil

    from helpers import inference
    from helpers.serving import LocalEndpoint

    with tempfile.TemporaryDirectory(prefix="sagebook-bench-") as tmp:
        model_dir = model_dir or _quick_model(Path(tmp))
        cfg = json.loads((Path(model_dir) / "model_config.json").read_text())
        size = cfg["preprocessing"]["image_size"]
        from PIL import Image
        import io
        import numpy as np

        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
        image = buf.getvalue()
        bundle = inference.model_fn(str(model_dir))
        floor = []
        for _ in range(max(10, requests // 2)):
            t0 = time.perf_counter()
            inference.output_fn(inference.predict_fn(inference.input_fn(image, "image/jpeg"), bundle))
            floor.append(1e3 * (time.perf_counter() - t0))
        rows = [{"setup": "in-process handler (floor)", "workers": 0, "concurrency": 1, **_percentiles(floor),
                 "req_per_s": 1e3 / statistics.median(floor), "p50_vs_floor": 1.0, "worker_rss_mb": 0.0}]
        base = statistics.median(floor)
        for workers in worker_counts:
            with LocalEndpoint(model_dir, workers=workers) as ep:
                ep.predict(image)  # warm up every worker
                procs = [psutil.Process(ep.proc.pid), *psutil.Process(ep.proc.pid).children(recursive=True)]
                for c in levels:
                    n = max(requests, 4 * c)

                    def one(_: int) -> float:
                        t0 = time.perf_counter()
                        ep.predict(image)
                        return 1e3 * (time.perf_counter() - t0)

                    t0 = time.perf_counter()
                    with ThreadPoolExecutor(c) as pool:
                        ms = list(pool.map(one, range(n), timeout=300))
                    wall = time.perf_counter() - t0
                    rss = max((p.memory_info().rss for p in procs if p.is_running()), default=0) / 1e6
                    pct = _percentiles(ms)
                    rows.append({"setup": "local endpoint", "workers": workers, "concurrency": c, **pct,
                                 "req_per_s": n / wall, "p50_vs_floor": pct["p50_ms"] / base,
                                 "worker_rss_mb": rss})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0])
    fmt = {float: "{:.3f}", int: "{}"}
    cells = [[fmt.get(type(r[c]), "{}").format(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helpers.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI-sized runs (synthetic data, fewer repetitions)")
    sub = p.add_subparsers(dest="what")
    h = sub.add_parser("hpo", help="tuning wall time with and without the feature cache and pruning")
    h.add_argument("--trials", type=int, default=8)
    h.add_argument("--dataset", default="digits")
    h.add_argument("--backbone", default="resnet18")
    h.add_argument("--image-size", type=int, default=0)
    o = sub.add_parser("overhead", help="epoch time with the Debugger hook and the profiler on vs off")
    o.add_argument("--epochs", type=int, default=2)
    o.add_argument("--rounds", type=int, default=2)
    o.add_argument("--dataset", default="digits")
    o.add_argument("--backbone", default="resnet18")
    o.add_argument("--image-size", type=int, default=0)
    sv = sub.add_parser("serving", help="handler floor vs local endpoint latency and throughput")
    sv.add_argument("--model-dir", help="a trained model folder (default: a small model trained on the spot)")
    sv.add_argument("--requests", type=int, default=48)
    p.add_argument("--json", help="also write the results as JSON to this file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.what is None:  # every section
        results = run_all(args.quick)
        for section, rows in results.items():
            print(f"\n== {section} ==")
            print_table(rows) if rows else print("(no data: run `make book` first)")
        if args.json:
            Path(args.json).write_text(json.dumps({"quick": args.quick, "cores": __import__("os").cpu_count(),
                                                   **results}, indent=2, default=str))
        return 0
    if args.what == "serving":
        rows = bench_serving(Path(args.model_dir) if args.model_dir else None, args.requests)
        print("Serving: in-process handler vs the local endpoint (loopback, bounded requests); "
              "target: p50 at concurrency 1 within 1.2x of the floor:")
        print_table(rows)
        if args.json:
            Path(args.json).write_text(json.dumps({"serving": rows}, indent=2))
        return 0
    cfg = RunConfig(dataset=args.dataset, backbone=args.backbone, image_size=args.image_size)
    if args.what == "hpo":
        rows = bench_hpo(cfg, args.trials)
        print(f"Hyperparameter tuning, {args.trials} trials, {cfg.backbone} on {cfg.dataset} at {cfg.image_size}px:")
    else:
        rows = bench_overhead(cfg, args.epochs, args.rounds)
        print(f"Debugger hook + profiler overhead, {cfg.backbone} on {cfg.dataset} at {cfg.image_size}px, "
              f"{args.rounds} interleaved rounds of {args.epochs} epochs (target: under 10%):")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({args.what: rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
