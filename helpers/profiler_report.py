"""The ProfilerReport rules on the local profiler's files, and a self-contained ``profiler-report.html``.

SageMaker Profiler support ends 2027-06-30. These rules carry the names, parameters and default
values of the rules the SageMaker ProfilerReport runs (as sent by ``smdebug_rulesconfig``), and read
the files :mod:`helpers.runtime.profiler` writes into a job's output, locally or on SageMaker. A rule that
cannot apply (the GPU rules on a CPU job) says so instead of passing silently.
"""

from __future__ import annotations

import base64
import html
import io
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from helpers.runtime import profiler

REPORT_FILE = "profiler-report.html"


class ProfileError(ValueError):
    """The profiler folder is missing or empty."""


@dataclass
class Profile:
    """What the profiler recorded for one job."""

    folder: Path
    meta: dict[str, Any]
    system: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    top_ops: dict[str, Any] = field(default_factory=dict)

    @property
    def has_gpu(self) -> bool:
        return any(s.get("gpu") for s in self.system) or bool(self.meta.get("gpus"))

    @property
    def cores(self) -> int:
        return int(self.meta.get("cores") or (len(self.system[0]["cpu"]) if self.system else 1))


def _jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut by a crash
                continue
    return rows


def load_profile(folder: str | Path) -> Profile:
    """Read a job's ``profiler/`` folder (``OUTPUT/profiler``)."""
    folder = Path(folder)
    meta_path = folder / profiler.META_FILE
    if not meta_path.is_file():
        raise ProfileError(f"{folder} holds no profiler data: was the job run with profiler=True?")
    top = folder / profiler.TOP_OPS_FILE
    return Profile(folder=folder, meta=json.loads(meta_path.read_text()),
                   system=_jsonl(folder / profiler.SYSTEM_FILE), steps=_jsonl(folder / profiler.STEPS_FILE),
                   top_ops=json.loads(top.read_text()) if top.is_file() else {})


# --------------------------------------------------------------------------------------------------
# Rules


@dataclass
class ProfilerRuleResult:
    rule: str
    status: str  # IssuesFound | NoIssuesFound | NotApplicable
    triggered: int
    datapoints: int
    numbers: str
    description: str
    recommendation: str
    parameters: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ProfilerRuleSpec:
    name: str
    defaults: dict[str, Any]
    description: str
    recommendation: str
    needs_gpu: bool
    check: Callable[[Profile, dict[str, Any]], tuple[int, int, str]]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _gpu_series(p: Profile, key: str) -> list[list[float]]:
    """Per GPU, its utilisation (``key="util"``) or memory use in percent (``key="mem"``) over time."""
    n = max((len(s.get("gpu") or []) for s in p.system), default=0)
    series: list[list[float]] = [[] for _ in range(n)]
    for s in p.system:
        for i, g in enumerate(s.get("gpu") or []):
            if key == "util" and "util" in g:
                series[i].append(g["util"])
            elif key == "mem" and "mem_used" in g:
                series[i].append(100.0 * g["mem_used"] / max(1.0, g["mem_total"]))
    return series


def _low_gpu(p: Profile, k: dict[str, Any]) -> tuple[int, int, str]:
    hits, notes, n = 0, [], 0
    for i, util in enumerate(_gpu_series(p, "util")):
        n = max(n, len(util))
        if len(util) <= k["patience"]:
            notes.append(f"GPU{i}: {len(util)} samples, the rule starts after {k['patience']}")
            continue
        last = util[-k["window"]:]
        p95, p5 = _pct(last, 95), _pct(last, 5)
        if p95 < k["threshold_p95"] or (p95 > k["threshold_p95"] and p5 < k["threshold_p5"]):
            hits += 1
        notes.append(f"GPU{i}: p95 {p95:.0f}%, p5 {p5:.0f}% of the last {len(last)} samples")
    return hits, n, "; ".join(notes)


def _bottleneck(p: Profile, k: dict[str, Any], key: str) -> tuple[int, int, str]:
    points = bottlenecks = 0
    for s in p.system:
        gpus = [g["util"] for g in s.get("gpu") or [] if "util" in g]
        if not gpus:
            continue
        points += 1
        busy = max(s["cpu"]) > k["cpu_threshold"] if key == "cpu" else s.get("iowait", 0.0) > k["io_threshold"]
        if min(gpus) < k["gpu_threshold"] and busy:
            bottlenecks += 1
    share = 100.0 * bottlenecks / max(1, points)
    fired = int(points > k["patience"] and share > k["threshold"])
    note = f"{bottlenecks} of {points} samples ({share:.0f}%) had a GPU below {k['gpu_threshold']}% while "
    note += (f"a core was above {k['cpu_threshold']}%" if key == "cpu" else f"I/O wait was above {k['io_threshold']}%")
    if points <= k["patience"]:
        note += f"; the rule needs more than {k['patience']} samples"
    return fired, points, note


def _dataloader(p: Profile, k: dict[str, Any]) -> tuple[int, int, str]:
    workers, cores = int(p.meta.get("workers", 0)), p.cores
    if p.meta.get("feature_cache"):
        return 0, 1, (f"training read cached backbone features (no image decoding), so {workers} loader "
                      "workers is by design")
    if p.meta.get("image_cache"):
        return 0, 1, (f"training read images decoded once into memory (no decoding per epoch), so {workers} loader "
                      "workers is by design")
    low, high = cores * k["min_threshold"] / 100, cores * k["max_threshold"] / 100
    fired = int(workers < low or workers > high)
    return fired, 1, f"the data loader used {workers} worker process(es) on {cores} core(s) (expected {low:g} to {high:g})"


def _batch_size(p: Profile, k: dict[str, Any]) -> tuple[int, int, str]:
    cpu = [float(np.mean(s["cpu"])) for s in p.system]
    if len(cpu) <= max(k["window"], k["patience"]):
        return 0, len(cpu), f"{len(cpu)} samples; the rule starts after {max(k['window'], k['patience'])}"
    cpu95 = _pct(cpu[-k["window"]:], 95)
    hits, notes = 0, [f"CPU p95 {cpu95:.0f}%"]
    if cpu95 < k["cpu_threshold_p95"]:
        for i, (u, m) in enumerate(zip(_gpu_series(p, "util"), _gpu_series(p, "mem"))):
            g95, m95 = _pct(u[-k["window"]:], 95), _pct(m[-k["window"]:], 95)
            notes.append(f"GPU{i} p95 {g95:.0f}%, memory p95 {m95:.0f}%")
            hits += int(g95 < k["gpu_threshold_p95"] and m95 < k["gpu_memory_threshold_p95"])
    return hits, len(cpu), "; ".join(notes)


def _step_outlier(p: Profile, k: dict[str, Any]) -> tuple[int, int, str]:
    d = [s["data_s"] + s["compute_s"] for s in p.steps]
    if len(d) <= 100:
        return 0, len(d), f"{len(d)} training steps; the rule needs more than 100"
    mean, sd = statistics.fmean(d), statistics.pstdev(d)
    outliers = [x for x in d if x > mean + k["stddev"] * sd]
    return int(len(outliers) > k["n_outliers"]), len(d), (
        f"{len(outliers)} of {len(d)} steps took longer than mean {mean * 1e3:.1f} ms + {k['stddev']} x std "
        f"{sd * 1e3:.1f} ms (max {max(d) * 1e3:.1f} ms); fires above {k['n_outliers']}")


def _gpu_memory(p: Profile, k: dict[str, Any]) -> tuple[int, int, str]:
    hits, notes, n = 0, [], 0
    for i, mem in enumerate(_gpu_series(p, "mem")):
        n = max(n, len(mem))
        w = k["window"]
        if len(mem) <= max(k["patience"], w + 1):
            notes.append(f"GPU{i}: {len(mem)} samples, the rule starts after {k['patience']}")
            continue
        diff = float(np.mean(mem[-w:]) - np.mean(mem[-w - 1:-2]))
        hits += int(diff > k["increase"])
        notes.append(f"GPU{i}: memory use changed by {diff:+.1f} points over the last {w} samples")
    return hits, n, "; ".join(notes)


def _init_time(p: Profile, k: dict[str, Any]) -> tuple[int, int, str]:
    start, first = p.meta.get("process_start"), p.meta.get("first_step")
    if start is None or first is None:
        return 0, 0, "the job recorded no training step"
    minutes = (first - start) / 60
    return int(minutes > k["threshold"]), 1, (
        f"initialisation took {minutes * 60:.1f} s from process start to the first training step "
        f"(threshold {k['threshold']} min)")


def _overall(p: Profile, k: dict[str, Any]) -> tuple[int, int, str]:
    cpu = [float(np.mean(s["cpu"])) for s in p.system]
    mem = [s["mem_percent"] for s in p.system]
    if not cpu:
        return 0, 0, "no system samples"
    return 0, len(cpu), (f"CPU p50 {_pct(cpu, 50):.0f}%, p95 {_pct(cpu, 95):.0f}%, max {max(cpu):.0f}%; "
                         f"memory p50 {_pct(mem, 50):.0f}%, max {max(mem):.0f}%")


PROFILER_RULES: tuple[ProfilerRuleSpec, ...] = (
    ProfilerRuleSpec("LowGPUUtilization", dict(threshold_p95=70, threshold_p5=10, window=500, patience=1000),
                     "Checks if the GPU utilization is low or fluctuating.",
                     "Check if there are bottlenecks, minimize blocking calls, change distributed training "
                     "strategy, or increase the batch size.", True, _low_gpu),
    ProfilerRuleSpec("CPUBottleneck", dict(threshold=50, gpu_threshold=10, cpu_threshold=90, patience=1000),
                     "Checks if the CPU utilization is high and the GPU utilization is low: GPUs wait for data.",
                     "Consider increasing the number of data loaders or applying data pre-fetching.", True,
                     lambda p, k: _bottleneck(p, k, "cpu")),
    ProfilerRuleSpec("IOBottleneck", dict(threshold=50, gpu_threshold=10, io_threshold=50, patience=1000),
                     "Checks if the data I/O wait time is high and the GPU utilization is low.",
                     "Pre-fetch data or choose different file formats, such as binary formats that improve I/O "
                     "performance.", True, lambda p, k: _bottleneck(p, k, "io")),
    ProfilerRuleSpec("Dataloader", dict(min_threshold=70, max_threshold=200),
                     "Checks whether the number of data loader processes matches the available CPU cores.",
                     "Change the number of data loader processes.", False, _dataloader),
    ProfilerRuleSpec("BatchSize", dict(cpu_threshold_p95=70, gpu_threshold_p95=70, gpu_memory_threshold_p95=70,
                                       patience=1000, window=500),
                     "Checks if GPUs are underutilized because the batch size is too small.",
                     "The batch size is too small, and GPUs are underutilized. Consider running on a smaller "
                     "instance type or increasing the batch size.", True, _batch_size),
    ProfilerRuleSpec("StepOutlier", dict(stddev=3, mode=None, n_outliers=10),
                     "Detects outliers in step duration (a stall or a bottleneck).",
                     "Check if there are any bottlenecks (CPU, I/O) correlated to the step outliers.", False,
                     _step_outlier),
    ProfilerRuleSpec("GPUMemoryIncrease", dict(increase=5, patience=1000, window=10),
                     "Measures the average GPU memory footprint and triggers if there is a large increase.",
                     "Choose a larger instance type with more memory if footprint is close to maximum available "
                     "memory.", True, _gpu_memory),
    ProfilerRuleSpec("MaxInitializationTime", dict(threshold=20),
                     "Checks if the time before the first training step exceeds a threshold (minutes).",
                     "Initialization takes too long: stage the data closer (FastFile or Pipe input mode) or "
                     "shrink the container start-up work.", False, _init_time),
    ProfilerRuleSpec("OverallSystemUsage", {},
                     "Summarises system usage; it never raises an issue by itself.",
                     "Read the system usage statistics for headroom.", False, _overall),
)


def evaluate_profiler_rules(p: Profile, params: dict[str, dict[str, Any]] | None = None) -> list[ProfilerRuleResult]:
    """Every ProfilerReport rule on a profile; GPU rules on a CPU job are NotApplicable, with the reason."""
    params = params or {}
    names = {r.name for r in PROFILER_RULES}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"unknown profiler rule(s) {', '.join(unknown)}; rules are {', '.join(sorted(names))}")
    out = []
    for spec in PROFILER_RULES:
        k = {**spec.defaults, **params.get(spec.name, {})}
        bad = sorted(set(k) - set(spec.defaults))
        if bad:
            raise ValueError(f"{spec.name} has no parameter {', '.join(bad)}; it takes {', '.join(spec.defaults)}")
        if spec.needs_gpu and not p.has_gpu:
            out.append(ProfilerRuleResult(spec.name, "NotApplicable", 0, 0,
                                          "no GPU on this job: the rule measures GPU utilisation or memory",
                                          spec.description, spec.recommendation, k))
            continue
        triggered, points, numbers = spec.check(p, k)
        out.append(ProfilerRuleResult(spec.name, "IssuesFound" if triggered else "NoIssuesFound", triggered, points,
                                      numbers, spec.description, spec.recommendation, k))
    return out


# --------------------------------------------------------------------------------------------------
# Summaries


def step_split(p: Profile) -> dict[str, float]:
    """Where training-step time went: waiting for data vs computing."""
    data = sum(s["data_s"] for s in p.steps)
    compute = sum(s["compute_s"] for s in p.steps)
    total = data + compute
    return {"steps": len(p.steps), "data_s": data, "compute_s": compute,
            "data_share": data / total if total else float("nan"),
            "median_step_ms": 1e3 * statistics.median([s["data_s"] + s["compute_s"] for s in p.steps]) if p.steps else
            float("nan")}


def insights(p: Profile, results: list[ProfilerRuleResult]) -> list[str]:
    """Plain-language findings computed from the profile."""
    out = []
    split = step_split(p)
    if split["steps"]:
        out.append(f"{split['steps']} training steps, median {split['median_step_ms']:.1f} ms; "
                   f"{100 * split['data_share']:.0f}% of step time was spent waiting for data, "
                   f"{100 * (1 - split['data_share']):.0f}% computing.")
    workers, cores = p.meta.get("workers"), p.cores
    if workers is not None:
        out.append(f"The data loader used {workers} worker process(es) on {cores} core(s)"
                   + (" (cached features: no images were decoded)." if p.meta.get("feature_cache") else
                      " (images decoded once into memory: nothing left to decode per epoch)."
                      if p.meta.get("image_cache") else "."))
    if p.system:
        cpu = [float(np.mean(s["cpu"])) for s in p.system]
        out.append(f"CPU use averaged {statistics.fmean(cpu):.0f}% over {len(cpu)} samples "
                   f"(every {p.meta.get('interval_ms', 500)} ms); peak memory use {max(s['mem_percent'] for s in p.system):.0f}%.")
    if not p.has_gpu:
        out.append("No GPU: the four GPU rules do not apply to this job.")
    fired = [r.rule for r in results if r.status == "IssuesFound"]
    out.append(f"Profiler rules with issues: {', '.join(fired)}." if fired else "No profiler rule found an issue.")
    ops = p.top_ops.get("ops") or []
    if ops:
        top = ops[0]
        total = sum(o["self_cpu_us"] + o["self_device_us"] for o in ops) or 1
        out.append(f"The costliest operator over the traced steps was {top['name']} "
                   f"({100 * (top['self_cpu_us'] + top['self_device_us']) / total:.0f}% of the self time of the top operators).")
    return out


#: What the page's table says of a GPU rule on a job without a GPU (the reason is said once, under the table).
NO_GPU = "no GPU"


def results_table(results: list[ProfilerRuleResult], *, explained: bool = True):
    """Rule, status, triggered, datapoints, numbers and (unless ``explained`` is False) the recommendation.
    The page's table is short (``explained=False``), with :func:`explanations` under it."""
    import pandas as pd

    rows = [{"rule": r.rule, "status": r.status, "triggered": r.triggered, "datapoints": r.datapoints,
             "numbers": NO_GPU if not explained and r.status == "NotApplicable" else r.numbers,
             **({"recommendation": r.recommendation} if explained else {})} for r in results]
    return pd.DataFrame(rows).set_index("rule")


def explanations(results: list[ProfilerRuleResult]) -> list[str]:
    """Under the table: the rules that do not apply, named once with the reason; each other rule's advice."""
    absent = [r for r in results if r.status == "NotApplicable"]
    lines = []
    if absent:
        lines.append(", ".join(f"`{r.rule}`" for r in absent) + f": {absent[0].numbers}, so they do not apply here.")
    lines += [f"`{r.rule}` ({'fired' if r.status == 'IssuesFound' else 'no issue'}): {r.description} "
              f"{r.recommendation}" for r in results if r.status != "NotApplicable"]
    return lines


def top_ops_table(p: Profile, n: int = 10):
    import pandas as pd

    ops = (p.top_ops.get("ops") or [])[:n]
    return pd.DataFrame([{"operator": o["name"], "calls": o["calls"], "self CPU ms": o["self_cpu_us"] / 1e3,
                          "self device ms": o["self_device_us"] / 1e3} for o in ops])


# --------------------------------------------------------------------------------------------------
# The HTML report


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = ""
    for r in rows:
        cells = ""
        for k, v in r.items():
            cls = f' class="{v}"' if k == "status" else ""
            cells += f"<td{cls}>{html.escape(f'{v:.3g}' if isinstance(v, float) else str(v))}</td>"
        body += f"<tr>{cells}</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}.IssuesFound{background:#fdd}.NoIssuesFound{background:#dfd}.NotApplicable{background:#eee}
img{max-width:100%;display:block;margin:1em 0}.note{color:#555}"""


def build_report(p: Profile, results: list[ProfilerRuleResult], title: str = "Profiler report") -> str:
    """A self-contained HTML page: rules, insights, system and step charts, top operators (no network)."""
    from helpers import plots

    figures = [("System usage", plots.system_usage(p.system))]
    if p.steps:
        figures.append(("Training steps: waiting for data vs computing", plots.step_times(p.steps)))
    meta = p.meta
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class='note'>Device {html.escape(str(meta.get('device')))}, {p.cores} core(s), "
        f"{meta.get('gpus', 0)} GPU(s), batch size {meta.get('batch_size')}, sampling every "
        f"{meta.get('interval_ms')} ms. Rules and defaults as in SageMaker's ProfilerReport.</p>",
        "<h2>Rules</h2>", _table([{"rule": r.rule, "status": r.status, "numbers": r.numbers,
                                   "recommendation": r.recommendation} for r in results]),
        "<h2>What the numbers say</h2><ul>", *(f"<li>{html.escape(x)}</li>" for x in insights(p, results)), "</ul>",
    ]
    for caption, fig in figures:
        parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='{_png(fig)}'>")
    ops = [{"operator": o["name"], "calls": o["calls"], "self CPU ms": o["self_cpu_us"] / 1e3,
            "self device ms": o["self_device_us"] / 1e3} for o in (p.top_ops.get("ops") or [])[:15]]
    parts += ["<h2>Top operators (torch.profiler)</h2>", _table(ops),
              f"<p class='note'>Full trace: {profiler.TRACE_FILE} next to this report; open it in "
              "chrome://tracing or Perfetto.</p>", "</body></html>"]
    return "\n".join(parts)


def write_report(profile_dir: str | Path, dest: str | Path | None = None,
                 params: dict[str, dict[str, Any]] | None = None) -> tuple[Path, list[ProfilerRuleResult]]:
    """Evaluate the rules on a job's profiler folder and write ``profiler-report.html`` next to it."""
    p = load_profile(profile_dir)
    results = evaluate_profiler_rules(p, params)
    dest = Path(dest) if dest else Path(profile_dir).parent / REPORT_FILE
    from helpers.runtime.fileio import atomic_write_bytes

    atomic_write_bytes(dest, build_report(p, results).encode("utf-8"))
    return dest, results
