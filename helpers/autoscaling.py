"""Load testing one endpoint instance, and a target-tracking autoscaling **simulation** driven by it.

The load test is bounded in requests and seconds and talks to loopback only. The simulator is a
model, not a measurement: each minute it applies target tracking on invocations per instance
(with cooldowns, minimum and maximum) to a traffic profile, and estimates latency from the measured
capacity of one instance with a single-queue (M/M/1) approximation. Everything it produces is
labelled as a simulation.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from helpers.serverless import ScalingPolicy

SIMULATION = "Simulation"
TIE = 0.02  # two policies within 2% of each other cost (or wait) the same: no ranking


# --------------------------------------------------------------------------------------------------
# Load test


def load_test(call: Callable[[], bool], concurrency: Sequence[int] = (1, 4, 8), requests: int = 40,
              max_seconds: float = 20.0) -> list[dict[str, Any]]:
    """Throughput and latency by concurrency; ``call()`` returns True for a good answer.

    Each level sends at most ``requests`` requests and stops submitting after ``max_seconds``.
    """
    rows = []
    for c in concurrency:
        lat: list[float] = []
        errors = 0
        lock = threading.Lock()
        deadline = time.monotonic() + max_seconds

        def one(_: int) -> None:
            nonlocal errors
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            try:
                ok = call()
            except Exception:  # noqa: BLE001 - a failed request is counted, not raised
                ok = False
            with lock:
                lat.append(1e3 * (time.perf_counter() - t0))
                errors += 0 if ok else 1

        start = time.perf_counter()
        with ThreadPoolExecutor(c) as pool:
            list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
        lat.sort()
        q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]) if lat else (lambda p: float("nan"))
        rows.append({"concurrency": c, "requests": len(lat), "errors": errors, "seconds": round(wall, 2),
                     "req_per_s": len(lat) / wall if wall else 0.0, "p50_ms": q(0.5), "p95_ms": q(0.95),
                     "p99_ms": q(0.99), "latencies_ms": lat})
    return rows


def load_table(rows: list[dict[str, Any]]) -> Any:
    """A load test's rows as a DataFrame by concurrency, without the raw latencies."""
    import pandas as pd

    return pd.DataFrame(rows).drop(columns="latencies_ms", errors="ignore").set_index("concurrency")


def median_interval(latencies: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """A distribution-free 95% interval for the median: the order statistics ``n/2 -/+ z sqrt(n)/2``."""
    xs = sorted(latencies)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan
    half = z * math.sqrt(n) / 2
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half) - 1)
    return xs[lo], xs[hi]


def compare_medians(name_a: str, a: Sequence[float], name_b: str, b: Sequence[float]) -> str:
    """Which of two sets of latencies has the lower median, only when their 95% intervals do not overlap."""
    (a_lo, a_hi), (b_lo, b_hi) = median_interval(a), median_interval(b)
    a_med, b_med = statistics.median(a), statistics.median(b)
    said = (f"{name_a}: p50 {a_med:.0f} ms (95% interval {a_lo:.0f}-{a_hi:.0f}, {len(a)} requests); "
            f"{name_b}: p50 {b_med:.0f} ms ({b_lo:.0f}-{b_hi:.0f}, {len(b)} requests)")
    if a_hi < b_lo or b_hi < a_lo:
        faster = name_a if a_med < b_med else name_b
        return f"{said}: {faster} is faster, beyond the noise of these samples."
    return f"{said}: the intervals overlap, so these requests cannot tell which path is faster."


def step_load(call: Callable[[], str | None], steps: Sequence[tuple[int, float]],
              max_requests_per_step: int = 2000, hold_s: float | None = None) -> list[dict[str, Any]]:
    """A load that steps up and down: ``(clients, seconds)`` per step, each client calling in a loop.

    ``call()`` returns the response's ``CustomAttributes`` (``replica=ID;batch=N`` from the Ray Serve
    deployment), or raises for a failed request. One record per request: its end time ``t`` (s from the
    start), the step's clients, latency, whether it succeeded, and the replica and batch size that served it.

    With ``hold_s``, a step in which a replica answers for the first time (not the load's first replica) ends
    ``hold_s`` after that answer, or at its own end if that comes first: once the new replica serves, a few
    seconds measure what it adds, and the rest of the step would only repeat them.
    """
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    lock = threading.Lock()
    start = time.perf_counter()
    for clients, seconds in steps:
        deadline = [time.perf_counter() + seconds]
        budget = [max_requests_per_step]

        def client() -> None:
            while time.perf_counter() < deadline[0]:
                with lock:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                t0 = time.perf_counter()
                try:
                    attrs, ok = call() or "", True
                except Exception:  # noqa: BLE001 - a failed request is recorded, not raised
                    attrs, ok = "", False
                t1 = time.perf_counter()
                fields = dict(kv.split("=", 1) for kv in attrs.split(";") if "=" in kv)
                replica = fields.get("replica")
                with lock:
                    records.append({"t": t1 - start, "clients": clients, "latency_ms": 1e3 * (t1 - t0), "ok": ok,
                                    "replica": replica, "batch": int(fields.get("batch", 0) or 0)})
                    if replica and replica not in seen:
                        if seen and hold_s is not None:
                            deadline[0] = min(deadline[0], t1 + hold_s)
                        seen.add(replica)

        with ThreadPoolExecutor(clients) as pool:
            for _ in range(clients):
                pool.submit(client)
    return records


def replica_timeline(records: list[dict[str, Any]], window_s: float = 2.0) -> Any:
    """Per time window: clients, replicas that answered, throughput, p50 and p99 latency, mean batch (a DataFrame)."""
    import pandas as pd

    df = pd.DataFrame(records)
    df["window"] = (df["t"] // window_s) * window_s
    grouped = df.groupby("window")
    out = pd.DataFrame({
        "clients": grouped["clients"].max(),
        "replicas": grouped["replica"].nunique(),
        "req_per_s": grouped.size() / window_s,
        "p50_ms": grouped["latency_ms"].median(),
        "p99_ms": grouped["latency_ms"].quantile(0.99),
        "mean_batch": grouped["batch"].mean(),
        "errors": grouped["ok"].apply(lambda s: int((~s).sum())),
    })
    out.index.name = "t_s"
    return out


def capacity(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """One instance's capacity (best throughput, requests/s) and its unloaded latency (p50 at the lowest load)."""
    ok = [r for r in rows if r["requests"] and r["errors"] == 0] or rows
    return max(r["req_per_s"] for r in ok), min(ok, key=lambda r: r["concurrency"])["p50_ms"]


# --------------------------------------------------------------------------------------------------
# Traffic profiles (invocations per minute, one value per minute)


def ramp(minutes: int, start: float, end: float) -> list[float]:
    return [start + (end - start) * i / max(1, minutes - 1) for i in range(minutes)]


def spike(minutes: int, base: float, peak: float, at: int, width: int) -> list[float]:
    return [peak if at <= i < at + width else base for i in range(minutes)]


def daily_wave(minutes: int, low: float, high: float, period: int = 240) -> list[float]:
    """A day compressed into ``period`` minutes: quiet at night, busy mid-day."""
    return [low + (high - low) * 0.5 * (1 - math.cos(2 * math.pi * i / period)) for i in range(minutes)]


# --------------------------------------------------------------------------------------------------
# The simulator


#: AWS's load-testing rule for the target: SageMakerVariantInvocationsPerInstance = MAX_RPS x SAFETY_FACTOR x 60,
#: starting with a safety factor of 0.5 (https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-scaling-loadtest.html).
LOAD_TEST_SAFETY_FACTOR = 0.5


def recommended_target(max_rps: float, safety_factor: float = LOAD_TEST_SAFETY_FACTOR) -> float:
    """The target invocations per instance per minute that AWS's load-testing guide derives from a load test."""
    return max_rps * safety_factor * 60


@dataclass(frozen=True)
class ServiceModel:
    """What the service does between a metric and a serving instance, as the simulation models it.

    Target tracking creates two CloudWatch alarms on the one-minute metric: scale out when
    ``scale_out_datapoints`` datapoints in a row are above the target, scale in when ``scale_in_datapoints``
    in a row are below it (3 and 15 on AWS). A new instance serves ``startup_s`` after the decision (it is
    launched, pulls the image, loads the model: several minutes on SageMaker); it is billed from the
    decision. Cooldowns are the policy's.
    """

    scale_out_datapoints: int = 3
    scale_in_datapoints: int = 15
    startup_s: float = 300.0

    def __post_init__(self) -> None:
        if self.scale_out_datapoints < 1 or self.scale_in_datapoints < 1 or self.startup_s < 0:
            raise ValueError("datapoints must be >= 1 and startup_s >= 0")

    @property
    def startup_minutes(self) -> int:
        return math.ceil(self.startup_s / 60)


#: An idealised service (instant alarms and instances), to show what the real delays cost.
INSTANT = ServiceModel(scale_out_datapoints=1, scale_in_datapoints=1, startup_s=0)


@dataclass
class SimResult:
    policy: ScalingPolicy
    service: ServiceModel = field(default_factory=ServiceModel)
    objective_ms: float = math.inf  # the latency objective: minutes above it count against a policy
    minutes: list[int] = field(default_factory=list)
    traffic: list[float] = field(default_factory=list)
    instances: list[int] = field(default_factory=list)  # billed: serving plus starting
    serving: list[int] = field(default_factory=list)
    per_instance: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    events: list[tuple[int, str, int, int]] = field(default_factory=list)  # (minute, "out"/"in", from, to)

    def summary(self) -> dict[str, Any]:
        return {"policy": self.policy.name, "instance_minutes": sum(self.instances),
                "max_instances": max(self.instances), "scale_events": len(self.events),
                "minutes_over_objective": sum(lat > self.objective_ms for lat in self.latency_ms),
                "p50_latency_ms": statistics.median(self.latency_ms),
                "max_latency_ms": max(self.latency_ms)}


def estimated_latency(per_instance_per_minute: float, capacity_rps: float, base_ms: float,
                      cap_factor: float = 50.0) -> float:
    """M/M/1 estimate: ``base / (1 - utilisation)``, capped at ``cap_factor x base`` when saturated."""
    rho = per_instance_per_minute / 60.0 / capacity_rps
    return base_ms * cap_factor if rho >= 1 - 1 / cap_factor else base_ms / (1 - rho)


def simulate(traffic: Sequence[float], policy: ScalingPolicy, capacity_rps: float, base_latency_ms: float,
             start_instances: int | None = None, service: ServiceModel = ServiceModel(),
             objective_ms: float = math.inf) -> SimResult:
    """Target tracking, minute by minute, as the service applies it.

    Each minute the serving instances share the traffic; the metric is invocations per serving instance,
    and the latency is estimated from it. When the last ``scale_out_datapoints`` datapoints were all above
    the target, the desired count becomes ``ceil(invocations / target)`` (clamped to [min, max]) if the
    scale-out cooldown has passed since the last scale-out; the new instances serve ``startup_s`` later.
    When the last ``scale_in_datapoints`` were all below it and the scale-in cooldown has passed since the
    last scaling activity, instances are removed at once (those still starting first).
    """
    if capacity_rps <= 0:
        raise ValueError("capacity_rps must be > 0")
    target = policy.target_invocations_per_instance
    serving = min(policy.max_capacity, max(policy.min_capacity, start_instances or policy.min_capacity))
    starting: list[int] = []  # the minute each starting instance begins to serve
    last_out = last_any = -math.inf
    res = SimResult(policy=policy, service=service, objective_ms=objective_ms)
    metric: list[float] = []
    for minute, load in enumerate(traffic):
        now = minute * 60.0
        serving += sum(1 for m in starting if m == minute)
        starting = [m for m in starting if m > minute]
        per = load / serving
        current = serving + len(starting)  # billed: serving and starting
        metric.append(per)
        res.minutes.append(minute)
        res.traffic.append(load)
        res.instances.append(current)
        res.serving.append(serving)
        res.per_instance.append(per)
        res.latency_ms.append(estimated_latency(per, capacity_rps, base_latency_ms))
        desired = min(policy.max_capacity, max(policy.min_capacity, math.ceil(load / target)))
        high = len(metric) >= service.scale_out_datapoints and all(
            v > target for v in metric[-service.scale_out_datapoints:])
        low = len(metric) >= service.scale_in_datapoints and all(
            v < target for v in metric[-service.scale_in_datapoints:])
        if high and desired > current and now - last_out >= policy.scale_out_cooldown_s:
            res.events.append((minute, "out", current, desired))
            starting += [minute + max(1, service.startup_minutes)] * (desired - current)
            last_out = last_any = now
        elif low and desired < current and now - last_any >= policy.scale_in_cooldown_s:
            res.events.append((minute, "in", current, desired))
            remove = current - desired
            cancelled = min(remove, len(starting))
            starting = starting[:len(starting) - cancelled]
            serving -= remove - cancelled
            last_any = now
    return res


def insights(results: list[SimResult], capacity_rps: float) -> list[str]:
    """Plain-language comparison of simulated policies (labelled as a simulation): first on the latency objective
    (minutes the estimated latency spent above it), then on cost (instance-minutes)."""
    out = [f"{SIMULATION}: one instance was measured at {capacity_rps:.1f} requests/s "
           f"({capacity_rps * 60:.0f} invocations per minute) on this machine."]
    for r in results:
        s = r.summary()
        over = ("" if math.isinf(r.objective_ms) else
                f"{s['minutes_over_objective']} minute(s) above the {r.objective_ms:.0f} ms objective, ")
        out.append(f"{SIMULATION}, policy {s['policy']}: {over}{s['instance_minutes']} instance-minutes, up to "
                   f"{s['max_instances']} instance(s), {s['scale_events']} scaling event(s), estimated p50 latency "
                   f"{s['p50_latency_ms']:.0f} ms (worst {s['max_latency_ms']:.0f} ms).")
    if len(results) >= 2:
        a, b = results[0].summary(), results[1].summary()
        if a["minutes_over_objective"] == b["minutes_over_objective"]:
            objective = (f"both spend {a['minutes_over_objective']} minute(s) above the latency objective"
                         if not math.isinf(results[0].objective_ms) else "")
        else:
            better = min(a, b, key=lambda s: s["minutes_over_objective"])
            worse = max(a, b, key=lambda s: s["minutes_over_objective"])
            objective = (f"{better['policy']} meets the latency objective more often "
                         f"({better['minutes_over_objective']} minute(s) above it, against "
                         f"{worse['minutes_over_objective']})")
        if math.isclose(a["instance_minutes"], b["instance_minutes"], rel_tol=TIE):
            cost = f"both cost the same, {a['instance_minutes']} instance-minutes"
        else:
            cheaper = min(a, b, key=lambda s: s["instance_minutes"])
            cost = f"{cheaper['policy']} costs fewer instance-minutes"
        out.append(f"{SIMULATION}: " + "; ".join(x for x in (objective, cost) if x) + ".")
    return out


def startup_insight(result: SimResult) -> str | None:
    """What the alarms and the start-up delay cost in a run: the longest stretch the traffic needed more instances
    than were serving."""
    short = [m for m, load, n in zip(result.minutes, result.traffic, result.serving)
             if load / n > result.policy.target_invocations_per_instance]
    if not result.events or not short:
        return None
    first_out = next((m for m, kind, _, _ in result.events if kind == "out"), None)
    if first_out is None:
        return None
    start = max((m for m in short if m <= first_out), default=first_out)
    while start - 1 in short:
        start -= 1
    ready = first_out + max(1, result.service.startup_minutes)
    return (f"{SIMULATION}, policy {result.policy.name}: the traffic rose above the target at minute {start}; the "
            f"scale-out alarm needs {result.service.scale_out_datapoints} datapoints above it, so the decision came at "
            f"minute {first_out}, and the new instances served from minute {ready} "
            f"({result.service.startup_s / 60:.0f} minutes of start-up): {ready - start} minutes on too few instances.")


def replica_insights(timeline: Any) -> list[str]:
    """Sentences on a :func:`replica_timeline`: when replicas were added and removed, and what they changed."""
    if timeline is None or timeline.empty:
        return []
    lines = []
    peak = timeline["clients"].max()
    busy = timeline[timeline["clients"] == peak]
    most = int(timeline["replicas"].max())
    step_up, step_down = busy.index.min(), busy.index.max()
    first_most = timeline.index[(timeline["replicas"] == most) & (timeline.index >= step_up)]
    if most > 1 and len(first_most) and first_most[0] <= step_down:
        lines.append(f"Ray Serve went from 1 to {most} replicas about {first_most[0] - step_up:.0f} s after the load "
                     f"stepped up to {peak} clients (its upscale delay, then a new replica process that imports "
                     "PyTorch and loads the model).")
        one, more = busy[busy["replicas"] == 1], busy[busy["replicas"] == most]
        if len(one) and len(more):
            lines.append(f"At {peak} clients, {one['req_per_s'].mean():.0f} req/s with one replica (p99 "
                         f"{one['p99_ms'].mean():.0f} ms) and {more['req_per_s'].mean():.0f} req/s with {most} "
                         f"(p99 {more['p99_ms'].mean():.0f} ms): on this machine the cores are shared with the "
                         "clients and the proxies, so a replica adds less than it would on its own cores.")
        after = timeline[(timeline.index > step_down) & (timeline["replicas"] < most)]
        if len(after):
            lines.append(f"After the load stepped down, Ray Serve stopped a replica within "
                         f"{after.index[0] - step_down:.0f} s (its downscale delay).")
    elif most > 1 and len(first_most):
        lines.append(f"The second replica first answered {first_most[0] - step_up:.0f} s after the load stepped up, "
                     f"after the {peak}-client step had ended: starting a replica (a process that imports PyTorch and "
                     "loads the model) on cores the load keeps busy took longer than the step lasted.")
    else:
        lines.append(f"The replicas stayed at {most} during this load: {peak} clients did not keep more requests in "
                     "flight than the deployment's target per replica for long enough.")
    quiet = timeline[timeline["clients"] == timeline["clients"].min()]
    lines.append(f"Batching: {busy['mean_batch'].mean():.1f} requests per forward pass on average at {peak} clients, "
                 f"{quiet['mean_batch'].mean():.1f} at {int(timeline['clients'].min())}.")
    errors = int(timeline["errors"].sum())
    lines.append(f"{errors} requests of the stepped load failed." if errors
                 else "Every request of the stepped load was answered.")
    return lines
