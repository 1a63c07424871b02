"""The autoscaling simulator on known cases, and the bounded load test."""

import time

import pytest

from helpers import autoscaling
from helpers.serverless import ScalingPolicy

POLICY = ScalingPolicy(min_capacity=1, max_capacity=3, target_invocations_per_instance=60,
                       scale_out_cooldown_s=30, scale_in_cooldown_s=120)


def sim(traffic, policy=POLICY, **kw):
    """The policy's own mechanics, on an idealised service (instant alarms and instances)."""
    return autoscaling.simulate(traffic, policy, capacity_rps=2.0, base_latency_ms=20,
                                **{"service": autoscaling.INSTANT, **kw})


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
    base = sim([200] * 10, objective_ms=100)
    line = autoscaling.insights([base, sim([200] * 10, twin, objective_ms=100)], 2.0)[-1]
    minutes = base.summary()["instance_minutes"]
    assert f"both cost the same, {minutes} instance-minutes" in line
    assert "both spend" in line and "fewer" not in line and "more often" not in line


SLOW = autoscaling.ServiceModel(scale_out_datapoints=3, scale_in_datapoints=15, startup_s=300)


def test_a_spike_faster_than_start_up_gets_the_latency_the_model_predicts():
    """A spike at minute 10: the alarm needs minutes 10, 11, 12 above the target, the decision comes at 12, the
    instances serve from 17. Until then one instance carries the spike, at the M/M/1 latency of that load."""
    traffic = [30] * 10 + [150] * 20
    r = autoscaling.simulate(traffic, POLICY, capacity_rps=3.0, base_latency_ms=20, service=SLOW, objective_ms=50)
    assert r.events[0] == (12, "out", 1, 3)
    assert r.serving[16] == 1 and r.serving[17] == 3
    assert r.instances[12] == 1 and r.instances[13] == 3  # billed from the decision, serving 5 minutes later
    one = autoscaling.estimated_latency(150, 3.0, 20)  # 150/min on one instance of 180/min: 20 / (1 - 5/6)
    assert one == pytest.approx(120)
    assert r.latency_ms[10:17] == [pytest.approx(one)] * 7
    assert r.latency_ms[17] == pytest.approx(autoscaling.estimated_latency(50, 3.0, 20))
    assert r.summary()["minutes_over_objective"] == 7
    instant = autoscaling.simulate(traffic, POLICY, capacity_rps=3.0, base_latency_ms=20,
                                   service=autoscaling.INSTANT, objective_ms=50)
    assert instant.summary()["minutes_over_objective"] == 1  # the same policy on an instant service
    text = autoscaling.startup_insight(r)
    assert "minute 10" in text and "minute 12" in text and "minute 17" in text and "7 minutes on too few" in text


def test_scale_in_waits_for_fifteen_datapoints_below_the_target():
    traffic = [200] * 5 + [10] * 30  # 200/min on 3 instances is above the target of 60 each
    r = autoscaling.simulate(traffic, POLICY, capacity_rps=3.0, base_latency_ms=20, start_instances=3, service=SLOW)
    ins = [e for e in r.events if e[1] == "in"]
    assert ins[0][0] == 5 + 15 - 1  # the 15th quiet minute
    assert r.instances[ins[0][0] + 1] == 1


def test_the_load_testing_rule_sets_the_target():
    assert autoscaling.recommended_target(10.0) == 300.0  # 10 req/s x 0.5 x 60
    assert autoscaling.recommended_target(10.0, safety_factor=0.8) == 480.0


def test_policies_are_scored_on_the_latency_objective_first():
    lean = ScalingPolicy(name="lean", target_invocations_per_instance=170, max_capacity=3)
    traffic = [30] * 5 + [170] * 20
    a = autoscaling.simulate(traffic, POLICY, 3.0, 20, service=SLOW, objective_ms=100)
    b = autoscaling.simulate(traffic, lean, 3.0, 20, service=SLOW, objective_ms=100)
    line = autoscaling.insights([a, b], 3.0)[-1]
    assert "invocations-target-tracking meets the latency objective more often" in line
    assert "lean costs fewer instance-minutes" in line


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


def test_a_step_ends_hold_s_after_a_new_replica_answers_and_not_before():
    def replicas(new_after_s):
        begun = time.perf_counter()

        def call():  # replica "a" from the start; "b" joins new_after_s into the load
            time.sleep(0.01)
            return "replica=b;batch=1" if time.perf_counter() - begun > new_after_s else "replica=a;batch=1"
        return call

    records = autoscaling.step_load(replicas(0.3), [(1, 0.1), (2, 3.0), (1, 0.2)], hold_s=0.2)
    busy = [r["t"] for r in records if r["clients"] == 2]
    first_b = min(r["t"] for r in records if r["replica"] == "b")
    assert first_b < max(busy) <= first_b + 0.2 + 0.05  # the step ended hold_s after b's first answer, not at 3 s
    assert {r["clients"] for r in records} == {1, 2}  # the next step still ran

    # the load's first replica is not "new": without a newcomer a step runs its whole length
    records = autoscaling.step_load(replicas(60), [(2, 0.4)], hold_s=0.05)
    assert max(r["t"] for r in records) >= 0.39
    # without hold_s, a newcomer changes nothing
    records = autoscaling.step_load(replicas(0.1), [(2, 0.5)])
    assert max(r["t"] for r in records) >= 0.49


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


def test_an_order_is_claimed_only_beyond_the_noise():
    import random

    rng = random.Random(0)
    a = [200 + rng.gauss(0, 30) for _ in range(40)]
    b = [205 + rng.gauss(0, 30) for _ in range(40)]
    assert "cannot tell which path is faster" in autoscaling.compare_medians("direct", a, "via URL", b)
    far = [x + 150 for x in b]
    assert "direct is faster, beyond the noise" in autoscaling.compare_medians("direct", a, "via URL", far)
    lo, hi = autoscaling.median_interval(list(range(100)))
    assert lo < 50 < hi and hi - lo < 25


def test_the_load_table_leaves_the_raw_latencies_out():
    rows = autoscaling.load_test(lambda: True, concurrency=(1,), requests=5, max_seconds=5)
    assert len(rows[0]["latencies_ms"]) == 5 and "latencies_ms" not in autoscaling.load_table(rows).columns
