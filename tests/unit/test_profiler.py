import json
import re
import time

import pytest

from helpers import profiler_report
from helpers.runtime import profiler
from helpers.profiler_report import Profile, ProfileError


def profile(n_system=20, gpu=None, steps=None, **meta):
    system = []
    for i in range(n_system):
        s = {"t": 1000.0 + 0.5 * i, "cpu": [50.0, 60.0], "iowait": 0.0, "mem_percent": 30.0, "mem_used": 1e9,
             "disk_read_bps": 0.0, "disk_write_bps": 0.0, "gpu": []}
        if gpu:
            s["gpu"] = [gpu(i)]
        system.append(s)
    steps = steps if steps is not None else [{"step": i, "epoch": 1, "t": 0.0, "data_s": 0.01, "compute_s": 0.1,
                                              "batch": 32, "gpu_mem": None} for i in range(50)]
    base = {"cores": 2, "workers": 2, "batch_size": 32, "device": "cpu", "gpus": 1 if gpu else 0,
            "feature_cache": False, "interval_ms": 500, "process_start": 0.0, "fit_start": 1.0, "first_step": 5.0}
    return Profile(folder=None, meta={**base, **meta}, system=system, steps=steps)


def by_rule(results):
    return {r.rule: r for r in results}


def test_cpu_job_gpu_rules_say_they_do_not_apply():
    r = by_rule(profiler_report.evaluate_profiler_rules(profile()))
    for name in ("LowGPUUtilization", "CPUBottleneck", "IOBottleneck", "BatchSize", "GPUMemoryIncrease"):
        assert r[name].status == "NotApplicable" and "no GPU" in r[name].numbers
    assert all(r[n].status == "NoIssuesFound" for n in ("Dataloader", "StepOutlier", "MaxInitializationTime",
                                                          "OverallSystemUsage"))
    assert r["LowGPUUtilization"].parameters == {"threshold_p95": 70, "threshold_p5": 10, "window": 500,
                                                 "patience": 1000}


def test_dataloader_with_no_workers():
    r = by_rule(profiler_report.evaluate_profiler_rules(profile(workers=0)))["Dataloader"]
    assert r.status == "IssuesFound" and "used 0 worker process(es) on 2 core(s)" in r.numbers
    cached = by_rule(profiler_report.evaluate_profiler_rules(profile(workers=0, feature_cache=True)))["Dataloader"]
    assert cached.status == "NoIssuesFound" and "cached backbone features" in cached.numbers
    decoded = by_rule(profiler_report.evaluate_profiler_rules(profile(workers=0, image_cache=True)))["Dataloader"]
    assert decoded.status == "NoIssuesFound" and "decoded once into memory" in decoded.numbers


def test_step_outliers():
    steps = [{"step": i, "data_s": 0.0, "compute_s": 0.1 + (2.0 if i % 10 == 0 else 0.0)} for i in range(200)]
    r = by_rule(profiler_report.evaluate_profiler_rules(profile(steps=steps)))["StepOutlier"]
    assert r.status == "IssuesFound" and r.triggered == 1 and r.datapoints == 200
    few = by_rule(profiler_report.evaluate_profiler_rules(profile(steps=steps[:50])))["StepOutlier"]
    assert few.status == "NoIssuesFound" and "needs more than 100" in few.numbers


def test_long_initialisation():
    r = by_rule(profiler_report.evaluate_profiler_rules(profile(first_step=25 * 60.0)))["MaxInitializationTime"]
    assert r.status == "IssuesFound"


def test_gpu_rules_fire_on_their_problem():
    low = profile(1100, gpu=lambda i: {"util": 20.0, "mem_used": 1e9, "mem_total": 16e9})
    r = by_rule(profiler_report.evaluate_profiler_rules(low))
    assert r["LowGPUUtilization"].status == "IssuesFound" and r["BatchSize"].status == "IssuesFound"
    growing = profile(1100, gpu=lambda i: {"util": 90.0, "mem_used": 1e9 * (1 + i // 100 * 2), "mem_total": 16e9})
    assert by_rule(profiler_report.evaluate_profiler_rules(growing))["GPUMemoryIncrease"].status == "NoIssuesFound"
    jump = profile(1100, gpu=lambda i: {"util": 90.0, "mem_used": 1e9 if i < 1095 else 9e9, "mem_total": 16e9})
    assert by_rule(profiler_report.evaluate_profiler_rules(jump))["GPUMemoryIncrease"].status == "IssuesFound"
    starved = profile(1100, gpu=lambda i: {"util": 2.0, "mem_used": 1e9, "mem_total": 16e9})
    for s in starved.system:
        s["cpu"] = [99.0, 97.0]
    assert by_rule(profiler_report.evaluate_profiler_rules(starved))["CPUBottleneck"].status == "IssuesFound"
    busy = profile(1100, gpu=lambda i: {"util": 95.0, "mem_used": 12e9, "mem_total": 16e9})
    quiet = by_rule(profiler_report.evaluate_profiler_rules(busy))
    assert all(quiet[n].status == "NoIssuesFound" for n in ("LowGPUUtilization", "CPUBottleneck", "BatchSize"))


def test_rule_parameters_are_checked():
    with pytest.raises(ValueError, match="CPUBottleneck has no parameter cpu_limit"):
        profiler_report.evaluate_profiler_rules(profile(), {"CPUBottleneck": {"cpu_limit": 3}})
    with pytest.raises(ValueError, match="unknown profiler rule"):
        profiler_report.evaluate_profiler_rules(profile(), {"DiskFull": {}})


def test_sampler_and_step_timer_write_as_they_go(tmp_path):
    with profiler.SystemSampler(tmp_path / "system.jsonl", interval_s=0.1):
        time.sleep(0.45)
    rows = [json.loads(line) for line in (tmp_path / "system.jsonl").read_text().splitlines()]
    assert len(rows) >= 3 and len(rows[0]["cpu"]) >= 1 and {"mem_percent", "disk_read_bps", "gpu"} <= set(rows[0])
    timer = profiler.StepTimer(tmp_path / "steps.jsonl")
    timer.start_epoch(1)
    time.sleep(0.05)  # waiting for data
    timer.batch_ready()
    time.sleep(0.02)  # computing
    timer.step_done(8)
    timer.close()
    step = json.loads((tmp_path / "steps.jsonl").read_text())
    assert step["data_s"] >= 0.04 and 0.015 <= step["compute_s"] < step["data_s"] and step["batch"] == 8


def test_report_is_self_contained(tmp_path):
    p = profile()
    html = profiler_report.build_report(p, profiler_report.evaluate_profiler_rules(p))
    assert html.count("data:image/png;base64,") == 2
    assert not re.search(r"(src|href)=['\"]https?://", html)  # no network needed to read it
    assert "NotApplicable" in html and "waiting for data" in html


def test_missing_profile_is_a_clear_error(tmp_path):
    with pytest.raises(ProfileError, match="profiler=True"):
        profiler_report.load_profile(tmp_path)


def test_the_page_table_names_the_missing_gpu_once():
    results = profiler_report.evaluate_profiler_rules(profile())
    table = profiler_report.results_table(results, explained=False)
    assert "recommendation" not in table.columns
    assert set(table.loc[table["status"] == "NotApplicable", "numbers"]) == {"no GPU"}
    notes = profiler_report.explanations(results)
    assert sum("GPU on this job" in n for n in notes) == 1 and "`LowGPUUtilization`" in notes[0]
    assert any(n.startswith("`Dataloader` (no issue): ") for n in notes)
    assert "recommendation" in profiler_report.results_table(results).columns  # the full table, for MLflow
