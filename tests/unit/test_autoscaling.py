"""The autoscaling simulator on known cases, and the bounded load test."""

import time

import pytest

from helpers import autoscaling
from helpers.serverless import ScalingPolicy

POLICY = ScalingPolicy(min_capacity=1, max_capacity=3, target_invocations_per_instance=60,
                       scale_out_cooldown_s=30, scale_in_cooldown_s=120)


def sim(traffic, policy=POLICY, **kw):
    return autoscaling.simulate(traffic, policy, capacity_rps=2.0, base_latency_ms=20, **kw)


def test_steady_load_below_target_stays_at_minimum():
    r = sim([30] * 20)
    assert set(r.instances) == {1} and r.events == []


def test_scale_out_above_target_and_max_respected():
    r = sim([30, 150, 150, 400, 400, 400])
    assert r.instances == [1, 1, 3, 3, 3, 3]  # 150/60 -> 3; 400/60 -> 7 but max is 3
    assert r.events[0] == (1, "out", 1, 3)
    assert max(r.instances) == 3


def test_scale_out_cooldown_is_honoured():
    slow = ScalingPolicy(min_capacity=1, max_capacity=5, target_invocations_per_instance=60,
                         scale_out_cooldown_s=180, scale_in_cooldown_s=120)
    r = sim([100, 100, 250, 250, 250, 250], slow)
    assert r.events == [(0, "out", 1, 2), (3, "out", 2, 5)]  # minute 2 wanted more, but the cooldown ran to 3
    assert r.instances == [1, 2, 2, 2, 5, 5]


def test_scale_in_below_target_after_its_cooldown():
    r = sim([200, 200, 10, 10, 10, 10, 10, 10])
    ins = [e for e in r.events if e[1] == "in"]
    assert ins and ins[0][0] * 60 - 0 >= POLICY.scale_in_cooldown_s  # not before 120 s after the scale-out
    assert ins[0][3] == 1 and r.instances[-1] == 1 and min(r.instances) >= POLICY.min_capacity


def test_latency_estimate_grows_with_load_and_is_capped():
    base = autoscaling.estimated_latency(0, 2.0, 20)
    assert base == 20 and autoscaling.estimated_latency(60, 2.0, 20) == pytest.approx(40)
    assert autoscaling.estimated_latency(10_000, 2.0, 20) == 20 * 50
    with pytest.raises(ValueError):
        autoscaling.simulate([1], POLICY, capacity_rps=0, base_latency_ms=1)


def test_profiles():
    assert autoscaling.ramp(3, 0, 10) == [0, 5, 10]
    assert autoscaling.spike(5, 1, 9, at=2, width=2) == [1, 1, 9, 9, 1]
    wave = autoscaling.daily_wave(240, 10, 50)
    assert wave[0] == pytest.approx(10) and max(wave) == pytest.approx(50)


def test_insights_compare_policies():
    lean = ScalingPolicy(name="lean", target_invocations_per_instance=120, max_capacity=3)
    text = "\n".join(autoscaling.insights([sim([200] * 10), sim([200] * 10, lean)], 2.0))
    assert text.count("Simulation") >= 4 and "lean costs fewer instance-minutes" in text


def test_equal_policies_are_said_to_cost_the_same_not_ranked():
    twin = ScalingPolicy(name="twin")
    base = sim([200] * 10)
    line = autoscaling.insights([base, sim([200] * 10, twin)], 2.0)[-1]
    minutes = base.summary()["instance_minutes"]
    assert f"both policies cost the same, {minutes} instance-minutes" in line
    assert "their worst latency is the same" in line and "fewer" not in line and "lower" not in line


def test_load_test_is_bounded():
    import threading

    calls, lock = [], threading.Lock()

    def call():
        with lock:
            calls.append(len(calls) % 5 != 0)
            ok = calls[-1]
        time.sleep(0.01)
        return ok

    rows = autoscaling.load_test(call, concurrency=(1, 4), requests=20, max_seconds=5)
    assert [r["requests"] for r in rows] == [20, 20] and len(calls) == 40
    assert rows[1]["req_per_s"] > rows[0]["req_per_s"] and sum(r["errors"] for r in rows) == calls.count(False) == 8
    capped = autoscaling.load_test(lambda: time.sleep(0.05) or True, concurrency=(1,), requests=1000, max_seconds=0.3)
    assert capped[0]["requests"] < 20 and capped[0]["seconds"] < 5
    assert autoscaling.capacity(rows)[0] == max(r["req_per_s"] for r in rows)


def test_a_stepped_load_records_which_replica_answered_and_the_timeline_counts_them():
    import itertools

    counter = itertools.count()

    def call():  # two replicas answer once the load is high; a batch grows with it
        n = next(counter)
        time.sleep(0.005)
        if n == 5:
            raise RuntimeError("dropped")
        return f"replica={'a' if n % 2 or n < 12 else 'b'};batch={1 + n % 3}"

    records = autoscaling.step_load(call, [(1, 0.1), (4, 0.2)], max_requests_per_step=12)
    assert len(records) == 24 and sum(not r["ok"] for r in records) == 1
    assert [r["clients"] for r in records[:12]] == [1] * 12 and {r["clients"] for r in records[12:]} == {4}
    assert {r["replica"] for r in records if r["ok"]} == {"a", "b"}
    timeline = autoscaling.replica_timeline(records, window_s=0.05)
    assert timeline["replicas"].max() == 2 and timeline["errors"].sum() == 1
    assert timeline["req_per_s"].sum() * 0.05 == pytest.approx(24)
    lines = autoscaling.replica_insights(timeline)
    assert any("from 1 to 2 replicas" in line for line in lines) and "1 requests of the stepped load failed." in lines


def test_replica_insights_say_when_nothing_scaled():
    import pandas as pd

    timeline = pd.DataFrame({"clients": [1, 16, 16, 2], "replicas": [1, 1, 1, 1], "req_per_s": [10, 30, 30, 12],
                             "p50_ms": [50, 300, 300, 80], "p99_ms": [60, 400, 400, 90],
                             "mean_batch": [1.0, 6.5, 6.7, 1.2], "errors": [0, 0, 0, 0]}, index=[0, 2, 4, 6])
    lines = autoscaling.replica_insights(timeline)
    assert lines[0].startswith("The replicas stayed at 1") and "6.6 requests per forward pass" in lines[1]
    assert lines[-1] == "Every request of the stepped load was answered."


def test_a_replica_that_came_after_the_busy_step_is_said_so():
    import pandas as pd

    timeline = pd.DataFrame({"clients": [1, 16, 16, 2, 2], "replicas": [1, 1, 1, 2, 1], "req_per_s": [10] * 5,
                             "p50_ms": [50] * 5, "p99_ms": [60] * 5, "mean_batch": [1.0] * 5, "errors": [0] * 5},
                            index=[0, 2, 4, 6, 8])
    assert "after the 16-client step had ended" in autoscaling.replica_insights(timeline)[0]
