"""Benchmarks: comparisons measured side by side in one run, printed as a table.

    python -m helpers.bench hpo [--trials 8] [--dataset digits] [--backbone resnet18] [--json PATH]
    python -m helpers.bench overhead [--epochs 2] [--rounds 2]
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
    sub = p.add_subparsers(dest="what", required=True)
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
    p.add_argument("--json", help="also write the results as JSON to this file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
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
