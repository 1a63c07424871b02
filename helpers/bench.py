"""Benchmarks: comparisons measured side by side in one run, printed as a table.

    python -m helpers.bench [--quick] [--json PATH]       # every comparison of the performance appendix
    python -m helpers.bench hpo [--trials 8] [--dataset digits] [--backbone efficientnet_lite0] [--json PATH]
    python -m helpers.bench overhead [--epochs 2] [--rounds 2]
    python -m helpers.bench serving [--model-dir DIR] [--requests 48]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from helpers.config import RunConfig


def bench_hpo(cfg: RunConfig, trials: int) -> list[dict[str, Any]]:
    """Tuning wall time and best objective: feature cache and pruning, the cache alone, neither; same trials and seed."""
    from helpers import data, hpo

    root = data.prepare_dataset(cfg, progress=False)
    record = data.manifest_record(cfg, data.validate_dataset(root, progress=False))
    rows = []
    variants = [("feature cache + pruning", True, True), ("feature cache only", True, False),
                ("no cache, no pruning", False, False)]
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


#: The overhead section's variants: the instruments, and whether the job tracks to MLflow (a SQLite store).
TRACKED = "hook + profiler + MLflow + TensorBoard"


def bench_overhead(cfg: RunConfig, epochs: int = 3, rounds: int = 2) -> list[dict[str, Any]]:
    """Epoch time with the instruments on vs off, side by side in interleaved rounds: the Debugger hook and the
    profiler (default settings), then those with MLflow tracking (its system metrics sampled every second) and
    TensorBoard event files too.

    The first epoch carries the one-off costs (creating the hook, the profiler's operator-trace window
    and its export); the later epochs show the cost per step once they run.
    """
    import statistics

    from helpers import data
    from helpers.runtime.debugger import Instrumentation
    from helpers.runtime.train import JobPaths, TrainConfig, fit

    if epochs < 2:
        raise ValueError("the overhead comparison needs at least 2 epochs: the first one carries one-off costs")
    root = data.prepare_dataset(cfg, progress=False)
    tc = TrainConfig(backbone=cfg.backbone, weights=cfg.weights, image_size=cfg.image_size, epochs=epochs,
                     patience=0, use_feature_cache=False, batch_size=32)
    from helpers.runtime.tracking import MlflowRun

    variants = {"off": Instrumentation(), "hook + profiler": Instrumentation(debugger=True, profiler=True),
                TRACKED: Instrumentation(debugger=True, profiler=True, tensorboard=True)}
    first: dict[str, list[float]] = {k: [] for k in variants}
    later: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory(prefix="sagebook-bench-") as tmp:
        for r in range(rounds):
            for label, inst in variants.items():
                out = Path(tmp) / f"{label.replace(' ', '')}-{r}"
                paths = JobPaths(root / "train", root / "valid", None, out / "model", out / "output", None,
                                 out / "tensorboard" if inst.tensorboard else None)
                tracker = MlflowRun({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
                                     "TRAINING_JOB_NAME": f"bench-{r}"} if inst.tensorboard else {},
                                    emit=lambda line: None)
                tracker.start(tc.to_dict())  # creating the store happens here, before the timed epochs
                res = fit(tc, paths, instruments=inst, emit=lambda line: None, write_artifacts=False,
                          on_epoch=tracker.log_epoch)
                tracker.end()
                first[label].append(res.history[0]["seconds"])
                later[label] += [h["seconds"] for h in res.history[1:]]
    base_first, base_later = statistics.median(first["off"]), statistics.median(later["off"])
    return [{"variant": k, "rounds": rounds, "first_epoch_s": statistics.median(first[k]),
             "median_later_epoch_s": statistics.median(later[k]),
             "overhead_pct": 100 * (statistics.median(later[k]) / base_later - 1),
             "first_epoch_overhead_pct": 100 * (statistics.median(first[k]) / base_first - 1)} for k in variants]


def _device() -> "torch.device":
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: "torch.device") -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_style_training(root: Path, backbone: str, image_size: int, epochs: int, lr: float = 1e-3,
                        batch_size: int = 32, trainable: bool = False) -> dict[str, Any]:
    """The seed projects' loop: ImageFolder decoding and resizing every JPEG every epoch, ``num_workers=0``,
    fp32, no caching, the (frozen or trainable) backbone run on every batch of every epoch, and a
    validation pass after each epoch. On the GPU when there is one, as the seeds did."""
    import torch
    from torch import nn
    from torchvision import datasets

    from helpers.runtime.models import ModelConfig, build_model
    from helpers.runtime.presets import Preprocessing, eval_transform

    device = _device()
    start = time.perf_counter()  # like ours, the time includes building the model and the loaders
    prep = Preprocessing.for_size(image_size)
    train = datasets.ImageFolder(str(root / "train"), transform=eval_transform(prep))
    valid = datasets.ImageFolder(str(root / "valid"), transform=eval_transform(prep))
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=0)
    valid_loader = torch.utils.data.DataLoader(valid, batch_size=batch_size, num_workers=0)
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone, num_classes=len(train.classes)), freeze_backbone=not trainable)
    model = model.to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    crit = nn.CrossEntropyLoss()
    accuracy = 0.0
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in valid_loader:
                correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        accuracy = correct / len(valid)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"images_per_s": len(train) * epochs / seconds, "valid_accuracy": accuracy, "seconds": seconds,
            "loader": loader, "device": str(device)}


def our_techniques(cfg: "TrainConfig", device: "torch.device", data: bool = True) -> str:
    """What our loop does differently from the seed-style one with this configuration, in words
    (``data=False``: only what changes the training step itself)."""
    from helpers.runtime.train import autocast_dtype

    if cfg.uses_feature_cache:
        return "feature cache"
    parts = ["decoded-image cache" if cfg.uses_image_cache else "loader workers"] if data else []
    dtype = autocast_dtype(device, cfg.amp, cfg.backbone, training=cfg.trains_whole_backbone)
    if dtype is not None:
        parts.append(f"{str(dtype).removeprefix('torch.')} autocast")
    if cfg.channels_last:
        parts.append("channels-last")
    return ", ".join(parts)


def bench_training(root: Path, backbone: str, image_size: int, epochs: dict[str, int]) -> list[dict[str, Any]]:
    """Training throughput and accuracy: the seed-style loop vs ours, with the backbone trainable and frozen.

    ``epochs`` maps ``trainable``/``frozen`` to the epochs of that pair. Ours: the decoded-image cache,
    autocast where the hardware has a fast low precision, channels-last convolutions; with a frozen backbone,
    the feature cache. Each time includes building the model and the loaders (and, for ours, decoding the
    images or computing the features once) and the validation pass after each epoch.
    """
    from helpers.runtime.train import JobPaths, TrainConfig, fit

    n_train = sum(1 for p in (root / "train").rglob("*") if p.is_file())
    device = _device()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sagebook-bench-") as tmp:
        for kind in ("trainable", "frozen"):
            trainable, n_epochs = kind == "trainable", epochs[kind]
            base = seed_style_training(root, backbone, image_size, n_epochs, trainable=trainable)
            common = {"epochs": n_epochs, "image_size": image_size, "device": str(device)}
            rows.append({"variant": f"seed-style, {kind} backbone (decode every epoch, 0 workers, fp32)", **common,
                         "seconds": base["seconds"], "images_per_s": base["images_per_s"],
                         "valid_accuracy": base["valid_accuracy"], "speedup": 1.0})
            paths = JobPaths(root / "train", root / "valid", None, Path(tmp) / "m", Path(tmp) / "o", None)
            tc = TrainConfig(backbone=backbone, weights="none", image_size=image_size, epochs=n_epochs, patience=0,
                             lr=1e-3, batch_size=32, freeze_backbone=not trainable)  # the seed-style loop's start
            t0 = time.perf_counter()
            res = fit(tc, paths, emit=lambda line: None, write_artifacts=False)
            _sync(device)
            seconds = time.perf_counter() - t0
            ips = n_train * n_epochs / seconds
            rows.append({"variant": f"ours, {kind} backbone ({our_techniques(tc, device)})", **common,
                         "seconds": seconds, "images_per_s": ips, "valid_accuracy": res.best_valid["accuracy"],
                         "speedup": ips / base["images_per_s"]})
    return rows


def bench_hardware(backbone: str, image_size: int, batch_size: int = 32) -> list[dict[str, Any]]:
    """The machine's matmul GFLOP/s at each precision next to a training step's achieved GFLOP/s.

    The step's FLOPs are counted by ``torch.utils.flop_counter``; the seed-style step runs in fp32,
    ours under autocast (when the hardware has a fast low precision) and channels-last, and each is
    compared with the limit of the precision its convolutions run in.
    """
    import statistics

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from helpers.runtime.models import ModelConfig, build_model
    from helpers.runtime.train import TrainConfig, autocast_dtype

    device = _device()
    ours = TrainConfig(backbone=backbone, freeze_backbone=False)
    ours_dtype = autocast_dtype(device, ours.amp, backbone, training=ours.trains_whole_backbone)
    n = 4096 if device.type == "cuda" else 1024
    limits: dict[str, float] = {}
    rows = []
    for dtype in dict.fromkeys([torch.float32, ours_dtype or torch.float32]):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        best = 0.0
        for _ in range(6):  # the limit is the best of several timings; the first one warms up
            _sync(device)
            reps, t0 = (20 if device.type == "cuda" else 3), time.perf_counter()
            for _ in range(reps):
                torch.matmul(a, b)
            _sync(device)
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
        name = str(dtype).removeprefix("torch.")
        limits[name] = best
        rows.append({"measure": f"matmul {n}x{n} {name} on {device.type} (the machine's limit)", "precision": name,
                     "gflop_per_s": limits[name], "share_of_limit": 1.0})
    for label, dtype, cl in (("seed-style (fp32)", None, False),
                             (f"ours ({our_techniques(ours, device, data=False)})", ours_dtype, ours.channels_last)):
        torch.manual_seed(0)
        model = build_model(ModelConfig(backbone, num_classes=10), freeze_backbone=False).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.randn(batch_size, 3, image_size, image_size, device=device)
        y = torch.randint(0, 10, (batch_size,), device=device)
        if cl:
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

        def step() -> None:
            opt.zero_grad()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        seconds = []
        for _ in range(6 if device.type == "cuda" else 4):  # the first step warms up
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            seconds.append(time.perf_counter() - t0)
        achieved = flops / statistics.median(seconds[1:]) / 1e9
        name = str(dtype or torch.float32).removeprefix("torch.")
        rows.append({"measure": f"training step, {label}, trainable {backbone}, {image_size}px, batch {batch_size}",
                     "precision": name, "gflop_per_s": achieved, "share_of_limit": achieved / limits[name]})
    return rows


def reference_runs(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    """The full runs kept with the book (``book/results/NAME.json``), by name. Quick runs are left out: their
    ratios on tiny data are noise."""
    from helpers.book import ROOT

    runs = {}
    for path in sorted((folder or ROOT / "book" / "results").glob("*.json")):
        doc = json.loads(path.read_text())
        if not doc.get("quick"):
            runs[path.stem] = doc
    return runs


def runs_table(runs: dict[str, dict[str, Any]], section: str) -> Any:
    """One section of every run as one table, the run's name first (empty when no run has the section)."""
    import pandas as pd

    return pd.DataFrame([{"run": name, **row} for name, doc in runs.items() for row in doc.get(section) or []])


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


TRAIN_IMAGE_SIZE = 224  # the reference dataset's resolution, whatever the book's dataset is
QUICK_IMAGE_SIZE = 112  # --quick checks the command: a quarter of the pixels


def training_data(cfg: RunConfig, quick: bool) -> Path:
    """The training comparison's data: photo-sized synthetic JPEGs (quick) or the digits (full), at 224 px."""
    from helpers import data

    if not quick:
        return data.prepare_dataset(cfg.replace(dataset="digits"), progress=False)
    return data.make_synthetic(cfg.work_path / "datasets" / "bench-photos", num_classes=4, images_per_class=20,
                               size=(320, 500, 240, 400))


def run_all(quick: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Every comparison of the performance appendix, measured in this run (``quick``: CI-sized)."""
    from helpers import data

    cfg = RunConfig(dataset="synthetic" if quick else "digits", synthetic_classes=4, synthetic_images=20)
    root = data.prepare_dataset(cfg, progress=False)
    size = QUICK_IMAGE_SIZE if quick else TRAIN_IMAGE_SIZE
    return {
        "training": bench_training(training_data(cfg, quick), cfg.backbone, size,
                                   {"trainable": 2, "frozen": 3} if quick else {"trainable": 2, "frozen": 5}),
        "hpo": bench_hpo(cfg, 3 if quick else 8),
        "serving": bench_serving(None, 12 if quick else 48, levels=(1, 4) if quick else (1, 4, 16),
                                 sweep=BATCH_SWEEP[:1] if quick else BATCH_SWEEP, abuse=40 if quick else 600,
                                 empty=not quick),
        "overhead": bench_overhead(cfg, 2 if quick else 3, 1 if quick else 3),
        "hardware": bench_hardware(cfg.backbone, size, batch_size=8 if quick else 32),
        "emulator": bench_emulator(None, 2 if quick else 7, 12 if quick else 48),
        "chapters": chapter_times(),
    }


def _percentiles(ms: list[float]) -> dict[str, float]:
    import numpy as np

    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99))}


def _quick_model(work: Path) -> Path:
    """A small model trained on the synthetic set, when no trained model is at hand."""
    from helpers import data
    from helpers.runtime.train import JobPaths, TrainConfig, fit

    root = data.make_synthetic(work / "synthetic", num_classes=4, images_per_class=12)
    paths = JobPaths(root / "train", root / "valid", None, work / "model", work / "output", None)
    fit(TrainConfig(image_size=64, epochs=1, batch_size=16, num_workers=0), paths, emit=lambda line: None)
    return work / "model"


class _Poster:
    """``POST /invocations`` over one keep-alive connection per thread: the container's own port, no SDK."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def __call__(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        import http.client

        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request("POST", "/invocations", body=body, headers={"Content-Type": content_type,
                                                                     "Accept": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException):
            self.local.conn = None
            conn.close()
            raise


def _serving_load(post: _Poster, requests: list[tuple[bytes, str, int | None]], concurrency: int) -> dict[str, Any]:
    """Send ``(body, content type, expected top-1 index or None for a bad request)`` from ``concurrency`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    def one(req: tuple[bytes, str, int | None]) -> tuple[float, int, bool]:
        body, ctype, expected = req
        t0 = time.perf_counter()
        try:
            status, out = post(body, ctype)
        except Exception:  # noqa: BLE001 - a dropped connection counts as a 5xx
            return 1e3 * (time.perf_counter() - t0), 599, False
        ms = 1e3 * (time.perf_counter() - t0)
        if expected is None:
            return ms, status, 400 <= status < 500
        ok = status == 200 and json.loads(out)["predictions"][0]["top_k"][0]["index"] == expected
        return ms, status, ok

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(one, requests, timeout=600))
    wall = time.perf_counter() - t0
    good = [ms for (ms, status, _), req in zip(done, requests) if req[2] is not None]
    return {"concurrency": concurrency, "requests": len(done), **_percentiles(good or [float("nan")]),
            "req_per_s": len(done) / wall, "errors_5xx": sum(status >= 500 for _, status, _ in done),
            "wrong": sum(not ok for _, _, ok in done)}


#: Ray Serve settings the full benchmark compares (changes to the book's defaults). The first, measured at every
#: concurrency and with the abuse mix, is one replica with the default batching: like the one-worker
#: TorchServe-style endpoint but batched. Then other batch sizes and waits, one replica with both cores'
#: threads, and the book's default, which autoscales to two replicas of one thread each.
ONE = {"max_replicas": 1}
#: The serving rows' setups (helpers.plots.reference_serving draws them by these names).
FLOOR = "in-process handler (floor)"
TORCHSERVE = "pytorch container (TorchServe-style)"
RAY = "ray-serve container"
EMPTY_RAY = f"{RAY}, empty deployment"
BATCH_SWEEP: tuple[dict[str, Any], ...] = (
    ONE, {**ONE, "max_batch_size": 1, "batch_wait_timeout_s": 0.0}, {**ONE, "max_batch_size": 4},
    {**ONE, "batch_wait_timeout_s": 0.0}, {**ONE, "batch_wait_timeout_s": 0.02}, {**ONE, "num_cpus": 2}, {})


#: An application that answers at once, served by the same container: what Ray Serve itself costs per request.
_EMPTY_DEPLOYMENT = '''"""A deployment that answers without work: Ray Serve's own round trip."""
from ray import serve
from starlette.responses import Response


@serve.deployment(name="Empty")
class Empty:
    async def __call__(self, request):
        await request.body()
        return Response(b'{"predictions": []}', media_type="application/json")


app = Empty.bind()
'''


def _empty_ray_app(folder: Path) -> Path:
    """A model folder holding only ``config.yaml`` and ``deployment.py`` for :data:`_EMPTY_DEPLOYMENT`."""
    from helpers.runtime.serve_settings import CONFIG_FILE, DEPLOYMENT_FILE, to_yaml

    folder.mkdir(parents=True, exist_ok=True)
    app = {"applications": [{"name": "empty", "route_prefix": "/", "import_path": "deployment:app"}]}
    (folder / CONFIG_FILE).write_text(to_yaml(app) + "\n")
    (folder / DEPLOYMENT_FILE).write_text(_EMPTY_DEPLOYMENT)
    return folder


def bench_serving(model_dir: Path | None, requests: int = 48, levels: tuple[int, ...] = (1, 4, 16),
                  sweep: tuple[dict[str, Any], ...] = BATCH_SWEEP, abuse: int = 600,
                  empty: bool = True) -> list[dict[str, Any]]:
    """The in-process handler (the floor) vs the two serving containers on this machine, side by side.

    Each container gets the same requests on its own port (``POST /invocations``): latency and throughput
    at each concurrency; then ``abuse`` requests at concurrency 16 of which a quarter are bad (wrong
    answers, 5xx and the server's memory before and after). The Ray Serve container is also run with
    each batching setting of ``sweep`` (throughput against p99 at concurrency 16). First of all, an empty
    deployment in the Ray Serve container measures what Ray Serve itself adds to every request (``empty``:
    whether to; a quick run skips it, since the appendix reads full runs only).
    """
    import shutil
    import statistics

    from helpers.runtime import inference
    from helpers.runtime.serve_settings import ServeSettings, write_ray_layout
    from helpers.serving import LocalEndpoint, RayServeEndpoint

    with tempfile.TemporaryDirectory(prefix="sagebook-bench-") as tmp:
        model_dir = Path(model_dir or _quick_model(Path(tmp)))
        size = json.loads((model_dir / "model_config.json").read_text())["preprocessing"]["image_size"]
        images = [_jpeg(size, seed) for seed in range(8)]
        bundle = inference.model_fn(str(model_dir))
        answer = [inference.predict_fn(inference.input_fn(im, "image/jpeg"), bundle)[0][0]["index"] for im in images]
        floor = []
        for i in range(max(10, requests // 2)):
            t0 = time.perf_counter()
            inference.output_fn(inference.predict_fn(inference.input_fn(images[i % 8], "image/jpeg"), bundle))
            floor.append(1e3 * (time.perf_counter() - t0))
        del bundle
        base = statistics.median(floor)
        rows = [{"setup": FLOOR, "batching": "", "concurrency": 1, "requests": len(floor),
                 **_percentiles(floor), "req_per_s": 1e3 / base, "p50_vs_floor": 1.0, "errors_5xx": 0, "wrong": 0}]
        good = [(images[i % 8], "image/jpeg", answer[i % 8]) for i in range(max(requests, 64))]
        bad = _bad_requests()
        mix = [bad[(i // 4) % len(bad)] if i % 4 == 3 else good[i % len(good)] for i in range(abuse)]

        def measure(setup: str, batching: str, ep: Any, levels: tuple[int, ...], with_abuse: bool) -> None:
            """Start-up time (from ``started``), then each concurrency level, then the abuse mix."""
            post = _Poster(ep.port)
            post(images[0], "image/jpeg")  # warm up
            start_s = round(time.perf_counter() - started, 1)
            for c in levels:
                row = _serving_load(post, good[: max(requests, 4 * c)], c)
                rows.append({"setup": setup, "batching": batching, **row, "p50_vs_floor": row["p50_ms"] / base,
                             "rss_mb": ep.rss_bytes() / 1e6, "start_s": start_s})
            if with_abuse and abuse:
                before = ep.rss_bytes()
                row = _serving_load(post, mix, 16)
                after = ep.rss_bytes()
                rows.append({"setup": setup, "batching": batching, **row, "abuse": "a quarter bad",
                             "p50_vs_floor": row["p50_ms"] / base, "rss_mb": after / 1e6,
                             "rss_change_pct": 100 * (after - before) / before})

        if empty:
            started = time.perf_counter()
            with RayServeEndpoint(_empty_ray_app(Path(tmp) / "empty"), log_file=Path(tmp) / "ray-empty.log") as ep:
                post = _Poster(ep.port)
                post(images[0], "image/jpeg")
                start_s = round(time.perf_counter() - started, 1)
                trip = []
                for i in range(max(requests, 24)):
                    t0 = time.perf_counter()
                    post(images[i % 8], "image/jpeg")
                    trip.append(1e3 * (time.perf_counter() - t0))
                rows.append({"setup": EMPTY_RAY, "batching": "", "concurrency": 1, "requests": len(trip),
                             **_percentiles(trip), "req_per_s": len(trip) / (sum(trip) / 1e3),
                             "p50_vs_floor": statistics.median(trip) / base, "errors_5xx": 0, "wrong": 0,
                             "rss_mb": ep.rss_bytes() / 1e6, "start_s": start_s})
        started = time.perf_counter()
        with LocalEndpoint(model_dir, workers=1) as ep:
            measure(TORCHSERVE, "none", ep, levels, True)
        for i, overrides in enumerate(sweep):
            copy = shutil.copytree(model_dir, Path(tmp) / f"ray-{i}" / "model", ignore=shutil.ignore_patterns("code"))
            shutil.copytree(model_dir / "code", copy / "code")
            settings = ServeSettings(**{**ServeSettings().to_dict(), **overrides})
            write_ray_layout(copy, settings)
            label = (f"{settings.max_batch_size} / {1e3 * settings.batch_wait_timeout_s:g} ms, "
                     f"{settings.max_replicas} x {settings.num_cpus:g} cores")
            started = time.perf_counter()
            with RayServeEndpoint(copy, log_file=Path(tmp) / f"ray-{i}.log", environment=settings.environment()) as ep:
                first = i == 0
                measure(RAY, label, ep, levels if first else (max(levels),), first)
    return rows


#: The entry point the emulator benchmark runs: what a job costs beyond the script's own work.
_TINY_ENTRY_POINT = """import os
print("#metrics split=valid epoch=1 loss=0.5 accuracy=0.5")
open(os.path.join(os.environ["SM_MODEL_DIR"], "model.txt"), "w").write("weights")
"""
#: The same, importing what a real entry point imports first (the warm interpreter has them loaded).
_TORCH_ENTRY_POINT = "import torch, torchvision\n" + _TINY_ENTRY_POINT


def bench_emulator(model_dir: Path | None, jobs: int = 5, requests: int = 48) -> list[dict[str, Any]]:
    """What the local SageMaker adds: per training job (vs the entry point run directly) and per invocation.

    The job runs a tiny entry point, so what remains is the emulator's own work: fetching the code and a
    channel, the environment, log streaming, artifacts. The invocation compares boto3's
    ``invoke_endpoint`` straight to the model server with the same call through the emulator's runtime.
    Direct and emulated runs alternate.
    """
    import io
    import statistics
    import subprocess
    import tarfile

    from helpers.emulator import LocalSageMaker
    from helpers.packaging import package_model
    from helpers.serving import runtime_client

    with tempfile.TemporaryDirectory(prefix="sagebook-bench-") as tmp:
        work = Path(tmp)
        model_dir = model_dir or _quick_model(work / "quick")
        src = work / "src"
        src.mkdir()
        (src / "train.py").write_text(_TINY_ENTRY_POINT)
        (src / "train_torch.py").write_text(_TORCH_ENTRY_POINT)
        direct_s, job_s = [], []
        torch_s: dict[str, list[float]] = {"direct": [], "emulator": []}
        with LocalSageMaker(work / "emulator") as sm:
            s3, smc = sm.client("s3"), sm.client("sagemaker")
            s3.create_bucket(Bucket="sagebook-bench")
            for i in range(50):  # a channel of 50 small files
                s3.put_object(Bucket="sagebook-bench", Key=f"data/train/c/{i}.png", Body=b"\0" * 4096)
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                for script in ("train.py", "train_torch.py"):
                    tar.add(src / script, arcname=script)
            s3.put_object(Bucket="sagebook-bench", Key="code/sourcedir.tar.gz", Body=buf.getvalue())

            def one(name: str, script: str) -> tuple[float, float]:
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-u", "-E", "-s", script], cwd=src, check=True,
                               capture_output=True, env={**os.environ, "SM_MODEL_DIR": str(work)})
                direct = time.perf_counter() - t0
                t0 = time.perf_counter()
                smc.create_training_job(
                    TrainingJobName=name, RoleArn="arn:aws:iam::123456789012:role/SageMakerRole",
                    AlgorithmSpecification={"TrainingImage": "pytorch-training", "TrainingInputMode": "File",
                                            "MetricDefinitions": [{"Name": "valid:loss", "Regex": r"loss=([0-9.]+)"}]},
                    HyperParameters={"sagemaker_program": json.dumps(script),
                                     "sagemaker_submit_directory": '"s3://sagebook-bench/code/sourcedir.tar.gz"'},
                    InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
                        "S3DataType": "S3Prefix", "S3Uri": "s3://sagebook-bench/data/train"}}}],
                    OutputDataConfig={"S3OutputPath": "s3://sagebook-bench/output"},
                    ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
                    StoppingCondition={"MaxRuntimeInSeconds": 300})
                smc.get_waiter("training_job_completed_or_stopped").wait(
                    TrainingJobName=name, WaiterConfig={"Delay": 0.05, "MaxAttempts": 6000})
                return direct, time.perf_counter() - t0

            sm.training.warm_interpreter().available()  # as in a book run: warmed while chapter 1 runs
            for i in range(jobs):
                d, e = one(f"bench-{i}", "train.py")
                direct_s.append(d)
                job_s.append(e)
                d, e = one(f"bench-torch-{i}", "train_torch.py")
                torch_s["direct"].append(d)
                torch_s["emulator"].append(e)
            archive = package_model(model_dir, work / "model.tar.gz")
            s3.put_object(Bucket="sagebook-bench", Key="model.tar.gz", Body=archive.read_bytes())
            smc.create_model(ModelName="bench", ExecutionRoleArn="arn:aws:iam::123456789012:role/SageMakerRole",
                             PrimaryContainer={"Image": "pytorch-inference",
                                               "ModelDataUrl": "s3://sagebook-bench/model.tar.gz"})
            smc.create_endpoint_config(EndpointConfigName="bench", ProductionVariants=[{
                "VariantName": "AllTraffic", "ModelName": "bench", "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large"}])
            smc.create_endpoint(EndpointName="bench", EndpointConfigName="bench")
            smc.get_waiter("endpoint_in_service").wait(EndpointName="bench", WaiterConfig={"Delay": 0.2})
            server = sm.endpoints.hosted[("us-east-1", "bench")].server
            clients = {"direct": runtime_client(server.endpoint_url), "emulator": sm.client("sagemaker-runtime")}
            image = _jpeg(json.loads((Path(model_dir) / "model_config.json").read_text())["preprocessing"]["image_size"])
            ms: dict[str, list[float]] = {"direct": [], "emulator": []}
            for i in range(requests + 4):
                for how, client in clients.items():
                    t0 = time.perf_counter()
                    client.invoke_endpoint(EndpointName="bench", Body=image, ContentType="image/jpeg")["Body"].read()
                    if i >= 4:  # after a warm-up
                        ms[how].append(1e3 * (time.perf_counter() - t0))
    rows = []
    d, e = 1e3 * statistics.median(direct_s), 1e3 * statistics.median(job_s)
    rows.append({"measure": "training job (tiny entry point, 50-file channel)", "direct_ms": d, "emulator_ms": e,
                 "added_ms": e - d, "n": jobs})
    d, e = 1e3 * statistics.median(torch_s["direct"]), 1e3 * statistics.median(torch_s["emulator"])
    rows.append({"measure": "training job (the same, importing torch: the warm interpreter has it)",
                 "direct_ms": d, "emulator_ms": e, "added_ms": e - d, "n": jobs})
    d, e = statistics.median(ms["direct"]), statistics.median(ms["emulator"])
    rows.append({"measure": "invoke_endpoint p50 (same model server)", "direct_ms": d, "emulator_ms": e,
                 "added_ms": e - d, "n": requests})
    return rows


def _jpeg(size: int, seed: int = 0) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _bad_requests() -> list[tuple[bytes, str, None]]:
    """The abuse mix's bad requests, each a client's mistake the endpoint must answer with a 4xx: a wrong type,
    undecodable bytes, broken and deeply nested JSON, empty arrays, an image of too many pixels, and one request
    of many images each under the per-image limit that together pass the request's decoding budget."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    def npy(a: Any) -> bytes:
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    buf = io.BytesIO()
    Image.new("L", (4000, 4000)).save(buf, "PNG")  # 16 Mpx: fine alone, the fourth passes the 60 Mpx budget
    many = json.dumps({"instances": [{"b64": base64.b64encode(buf.getvalue()).decode()}] * 40}).encode()
    return [(b"1,2", "text/csv", None), (b"not an image", "image/jpeg", None), (b"{", "application/json", None),
            (b"[" * 100_000 + b"]" * 100_000, "application/json", None),
            (npy(np.zeros((0, 32, 32, 3), np.uint8)), "application/x-npy", None),
            (npy(np.zeros((1, 0, 0, 3), np.uint8)), "application/x-npy", None),
            (_big_png(), "image/png", None), (many, "application/json", None)]


def _big_png() -> bytes:
    """A 7000x7000 black PNG (about 50 KB): more pixels than an endpoint decodes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (7000, 7000)).save(buf, "PNG")
    return buf.getvalue()


def findings(results: dict[str, Any], judge: bool = True) -> list[str]:
    """What the numbers of one :func:`run_all` (or ``--json``) result say, each against its target.

    ``judge=False`` leaves out the verdicts: a quick run's tiny data cannot meet or miss a target.
    """

    def goal(target: str, ok: bool) -> str:
        return f" (target {target}: {'met' if ok else 'NOT met'})" if judge else ""

    lines = []
    train = results.get("training") or []
    for kind, target in (("trainable", 2.0), ("frozen", None)):
        base = next((r for r in train if r["variant"].startswith(f"seed-style, {kind}")), None)
        ours = next((r for r in train if r["variant"].startswith(f"ours, {kind}")), None)
        if base and ours:
            how = ours["variant"].split("(", 1)[-1].rstrip(")")
            verdict = goal(f"{target:g}x", ours["speedup"] >= target) if target else ""
            lines.append(f"Training, {kind} backbone: ours ({how}) ran {ours['speedup']:.1f}x the seed-style loop's "
                         f"images/s over {ours['epochs']} epoch(s){verdict}; validation accuracy "
                         f"{ours['valid_accuracy']:.2f} vs {base['valid_accuracy']:.2f}.")
    hpo = {r["variant"]: r for r in results.get("hpo") or []}
    slow = hpo.get("no cache, no pruning")
    for name in ("feature cache only", "feature cache + pruning"):
        if slow and name in hpo:
            r = hpo[name]
            ok = r["speedup"] >= 5 and r["best_objective"] >= slow["best_objective"]
            late = (" (the pruner stopped a trial that would have ended better)"
                    if r["best_objective"] < slow["best_objective"] and r.get("pruned") else "")
            lines.append(f"Tuning, {r['trials']} trials, {name}: {r['speedup']:.1f}x faster, best objective "
                         f"{r['best_objective']:.3f} vs {slow['best_objective']:.3f}{late}"
                         f"{goal('5x at an equal or better objective', ok)}.")
    lines += _serving_findings(results.get("serving") or [], goal)
    over = {r["variant"]: r for r in results.get("overhead") or []}
    if "hook + profiler" in over:
        r = over["hook + profiler"]
        lines.append(f"Debugger hook + profiler: {r['overhead_pct']:+.1f}% step time once running"
                     f"{goal('under 10%', r['overhead_pct'] < 10)}; {r['first_epoch_overhead_pct']:+.1f}% on the first "
                     "epoch, which sets them up and exports the operator trace.")
    if TRACKED in over:
        r = over[TRACKED]
        lines.append(f"With MLflow tracking (system metrics every second) and TensorBoard histograms as well: "
                     f"{r['overhead_pct']:+.1f}% step time once running{goal('under 10%', r['overhead_pct'] < 10)}.")
    steps = [r for r in results.get("hardware") or [] if r["measure"].startswith("training step")]
    if len(steps) == 2:
        seed, ours = steps
        lines.append(f"Hardware: the seed-style step reaches {100 * seed['share_of_limit']:.0f}% of the measured "
                     f"{seed['precision']} matmul throughput, ours {100 * ours['share_of_limit']:.0f}% of the "
                     f"{ours['precision']} one, {ours['gflop_per_s'] / seed['gflop_per_s']:.1f}x the GFLOP/s.")
    emu = results.get("emulator") or []
    if len(emu) == 3:
        job, torch_job, call = emu
        lines.append(f"The local SageMaker adds {job['added_ms'] / 1e3:.2f} s per training job "
                     f"({job['emulator_ms'] / 1e3:.2f} s vs {job['direct_ms'] / 1e3:.2f} s for the entry point run "
                     f"directly) and {call['added_ms']:.1f} ms per invocation (p50 {call['emulator_ms']:.1f} ms vs "
                     f"{call['direct_ms']:.1f} ms straight to the model server).")
        lines.append(f"An entry point that imports torch takes {torch_job['direct_ms'] / 1e3:.2f} s run directly and "
                     f"{torch_job['emulator_ms'] / 1e3:.2f} s as a job: the job forks from a warm interpreter that "
                     "imported torch once.")
    chapters = results.get("chapters") or []
    if chapters:
        total = chapters[-1]["seconds"]
        lines.append(f"The chapters of the last `make book` took {total:.0f} s in all{goal('under 600 s', total < 600)}.")
    return lines


def _serving_findings(rows: list[dict[str, Any]], goal: Callable[[str, bool], str]) -> list[str]:
    """The serving targets: Ray Serve's p50 near the floor, batching's throughput, and the abuse mix."""
    lines = []
    plain = [r for r in rows if not r.get("abuse")]
    ray = [r for r in plain if r["setup"] == RAY]
    torch = {r["concurrency"]: r for r in plain if r["setup"].startswith("pytorch")}
    first = ray[0]["batching"] if ray else None
    ray1 = next((r for r in ray if r["concurrency"] == 1 and r["batching"] == first), None)
    floor = next((r for r in rows if r["setup"].startswith("in-process")), None)
    if ray1:
        lines.append(f"Serving: the Ray Serve endpoint's p50 at concurrency 1 is {ray1['p50_vs_floor']:.2f}x the "
                     f"in-process handler's{goal('1.3x', ray1['p50_vs_floor'] <= 1.3)}.")
    empty = next((r for r in rows if r["setup"] == EMPTY_RAY), None)
    if empty and floor:
        share = empty["p50_ms"] / floor["p50_ms"]
        why = (f" A handler this fast cannot come within 1.3x behind Ray Serve on this machine: that needs a round "
               f"trip under 0.3x, {0.3 * floor['p50_ms']:.1f} ms." if share > 0.3 else "")
        lines.append(f"Ray Serve's own round trip (an empty deployment behind the same adapter, concurrency 1) is "
                     f"{empty['p50_ms']:.1f} ms at p50, {share:.2f}x the handler's {floor['p50_ms']:.1f} ms: the "
                     f"proxy, the replica's queue and two HTTP hops, paid by every request.{why}")
    top = max(torch) if torch else None
    best = max((r for r in ray if r["concurrency"] == top), key=lambda r: r["req_per_s"], default=None)
    if best and top:
        ratio = best["req_per_s"] / torch[top]["req_per_s"]
        lines.append(f"At concurrency {top}, Ray Serve with batching ({best['batching']}) served "
                     f"{best['req_per_s']:.0f} req/s against {torch[top]['req_per_s']:.0f} for the unbatched "
                     f"TorchServe-style endpoint: {ratio:.1f}x{goal('2x', ratio >= 2)}.")
    for r in (r for r in rows if r.get("abuse")):
        ok = r["wrong"] == 0 and r["errors_5xx"] == 0 and abs(r["rss_change_pct"]) <= 10
        lines.append(f"{r['setup']}, {r['requests']} requests at concurrency {r['concurrency']}, a quarter bad: "
                     f"{r['wrong']} wrong answers, {r['errors_5xx']} 5xx, memory {r['rss_change_pct']:+.1f}% after "
                     f"the load{goal('0, 0 and within 10%', ok)}.")
    return lines


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import datetime
    import platform

    import torch

    from helpers.runtime.settings import usable_cores

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "vector": vector_extensions(), "cores": usable_cores(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": datetime.date.today().isoformat()}


#: CPU features that change the numbers most, best first: native bfloat16 (what CPU autocast needs to pay off),
#: then the widest vector units. Two machines named alike ("AMD EPYC") differ here.
VECTOR_EXTENSIONS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX-512"),
                     ("avx2", "AVX2"), ("asimd", "NEON"))


def vector_extensions(cpuinfo: str | None = None) -> str:
    """The best of :data:`VECTOR_EXTENSIONS` that ``/proc/cpuinfo`` lists ("" when none is known)."""
    try:
        text = cpuinfo if cpuinfo is not None else Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = set(text.split())
    return next((name for flag, name in VECTOR_EXTENSIONS if flag in flags), "")


def describe(m: dict[str, Any]) -> str:
    """One line for a :func:`machine` record."""
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    vector = f" ({m['vector']})" if m.get("vector") else ""
    return f"{m['cpu']}{vector}, {m['cores']} cores{gpu}, torch {m['torch']}, measured {m['date']}"


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
    h.add_argument("--backbone", default=RunConfig.backbone)
    h.add_argument("--image-size", type=int, default=0)
    o = sub.add_parser("overhead", help="epoch time with the hook, the profiler, MLflow and TensorBoard on vs off")
    o.add_argument("--epochs", type=int, default=3)
    o.add_argument("--rounds", type=int, default=2)
    o.add_argument("--dataset", default="digits")
    o.add_argument("--backbone", default=RunConfig.backbone)
    o.add_argument("--image-size", type=int, default=0)
    sv = sub.add_parser("serving", help="handler floor vs the Ray Serve and TorchServe-style endpoints")
    sv.add_argument("--model-dir", help="a trained model folder (default: a small model trained on the spot)")
    sv.add_argument("--requests", type=int, default=48)
    em = sub.add_parser("emulator", help="what the local SageMaker adds per training job and per invocation")
    em.add_argument("--jobs", type=int, default=7)
    em.add_argument("--requests", type=int, default=48)
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
            Path(args.json).write_text(json.dumps({"quick": args.quick, "machine": machine(), **results}, indent=2,
                                                  default=str))
        return 0
    if args.what == "emulator":
        rows = bench_emulator(None, args.jobs, args.requests)
        print("The local SageMaker vs running the entry point, or calling the model server, directly:")
        print_table(rows)
        if args.json:
            Path(args.json).write_text(json.dumps({"emulator": rows}, indent=2))
        return 0
    if args.what == "serving":
        rows = bench_serving(Path(args.model_dir) if args.model_dir else None, args.requests)
        print("Serving: the in-process handler vs the Ray Serve and TorchServe-style containers (loopback, bounded "
              "requests):")
        print_table(rows)
        for line in _serving_findings(rows, lambda target, ok: f" (target {target}: {'met' if ok else 'NOT met'})"):
            print("•", line)
        if args.json:
            Path(args.json).write_text(json.dumps({"serving": rows}, indent=2))
        return 0
    cfg = RunConfig(dataset=args.dataset, backbone=args.backbone, image_size=args.image_size)
    if args.what == "hpo":
        rows = bench_hpo(cfg, args.trials)
        print(f"Hyperparameter tuning, {args.trials} trials, {cfg.backbone} on {cfg.dataset} at {cfg.image_size}px:")
    else:
        rows = bench_overhead(cfg, args.epochs, args.rounds)
        print(f"Instrument overhead (hook, profiler, MLflow, TensorBoard), {cfg.backbone} on {cfg.dataset} at {cfg.image_size}px, "
              f"{args.rounds} interleaved rounds of {args.epochs} epochs (target: under 10%):")
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({args.what: rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
