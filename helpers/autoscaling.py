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
                     "p99_ms": q(0.99)})
    return rows


def step_load(call: Callable[[], str | None], steps: Sequence[tuple[int, float]],
              max_requests_per_step: int = 2000) -> list[dict[str, Any]]:
    """A load that steps up and down: ``(clients, seconds)`` per step, each client calling in a loop.

    ``call()`` returns the response's ``CustomAttributes`` (``replica=ID;batch=N`` from the Ray Serve
    deployment), or raises for a failed request. One record per request: its end time ``t`` (s from the
    start), the step's clients, latency, whether it succeeded, and the replica and batch size that served it.
    """
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    start = time.perf_counter()
    for clients, seconds in steps:
        deadline = time.perf_counter() + seconds
        budget = [max_requests_per_step]

        def client() -> None:
            while time.perf_counter() < deadline:
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
                with lock:
                    records.append({"t": t1 - start, "clients": clients, "latency_ms": 1e3 * (t1 - t0), "ok": ok,
                                    "replica": fields.get("replica"), "batch": int(fields.get("batch", 0) or 0)})

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


@dataclass
class SimResult:
    policy: ScalingPolicy
    minutes: list[int] = field(default_factory=list)
    traffic: list[float] = field(default_factory=list)
    instances: list[int] = field(default_factory=list)
    per_instance: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    events: list[tuple[int, str, int, int]] = field(default_factory=list)  # (minute, "out"/"in", from, to)

    def summary(self) -> dict[str, Any]:
        return {"policy": self.policy.name, "instance_minutes": sum(self.instances),
                "max_instances": max(self.instances), "scale_events": len(self.events),
                "minutes_over_target": sum(p > self.policy.target_invocations_per_instance for p in self.per_instance),
                "p50_latency_ms": statistics.median(self.latency_ms),
                "max_latency_ms": max(self.latency_ms)}


def estimated_latency(per_instance_per_minute: float, capacity_rps: float, base_ms: float,
                      cap_factor: float = 50.0) -> float:
    """M/M/1 estimate: ``base / (1 - utilisation)``, capped at ``cap_factor x base`` when saturated."""
    rho = per_instance_per_minute / 60.0 / capacity_rps
    return base_ms * cap_factor if rho >= 1 - 1 / cap_factor else base_ms / (1 - rho)


def simulate(traffic: Sequence[float], policy: ScalingPolicy, capacity_rps: float, base_latency_ms: float,
             start_instances: int | None = None) -> SimResult:
    """Target tracking, minute by minute.

    Each minute: the metric is invocations per instance; the desired count is
    ``ceil(invocations / target)`` clamped to [min, max]. Scale-out happens when desired > current and
    the scale-out cooldown has passed since the last scale-out; scale-in when desired < current and
    the scale-in cooldown has passed since the last scaling activity. New instances serve from the
    next minute.
    """
    if capacity_rps <= 0:
        raise ValueError("capacity_rps must be > 0")
    n = start_instances or policy.min_capacity
    n = min(policy.max_capacity, max(policy.min_capacity, n))
    last_out = last_any = -math.inf
    res = SimResult(policy=policy)
    for minute, load in enumerate(traffic):
        now = minute * 60.0
        per = load / n
        res.minutes.append(minute)
        res.traffic.append(load)
        res.instances.append(n)
        res.per_instance.append(per)
        res.latency_ms.append(estimated_latency(per, capacity_rps, base_latency_ms))
        desired = min(policy.max_capacity, max(policy.min_capacity,
                                               math.ceil(load / policy.target_invocations_per_instance)))
        if desired > n and now - last_out >= policy.scale_out_cooldown_s:
            res.events.append((minute, "out", n, desired))
            n, last_out, last_any = desired, now, now
        elif desired < n and now - last_any >= policy.scale_in_cooldown_s:
            res.events.append((minute, "in", n, desired))
            n, last_any = desired, now
    return res


def insights(results: list[SimResult], capacity_rps: float) -> list[str]:
    """Plain-language comparison of simulated policies (labelled as a simulation)."""
    out = [f"{SIMULATION}: one instance was measured at {capacity_rps:.1f} requests/s "
           f"({capacity_rps * 60:.0f} invocations per minute) on this machine."]
    for r in results:
        s = r.summary()
        out.append(f"{SIMULATION}, policy {s['policy']}: {s['instance_minutes']} instance-minutes, up to "
                   f"{s['max_instances']} instance(s), {s['scale_events']} scaling event(s), estimated p50 latency "
                   f"{s['p50_latency_ms']:.0f} ms (worst {s['max_latency_ms']:.0f} ms).")
    if len(results) >= 2:
        a, b = results[0].summary(), results[1].summary()
        if math.isclose(a["instance_minutes"], b["instance_minutes"], rel_tol=TIE):
            cost = f"both policies cost the same, {a['instance_minutes']} instance-minutes"
        else:
            cheaper = min(a, b, key=lambda s: s["instance_minutes"])
            cost = f"{cheaper['policy']} costs fewer instance-minutes"
        if math.isclose(a["max_latency_ms"], b["max_latency_ms"], rel_tol=TIE):
            latency = f"their worst latency is the same, {a['max_latency_ms']:.0f} ms"
        else:
            latency = f"{min(a, b, key=lambda s: s['max_latency_ms'])['policy']} keeps the worst latency lower"
        out.append(f"{SIMULATION}: {cost}; {latency}.")
    return out



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
