"""The appendix's findings are computed from the numbers, each judged against its target; the abuse mix."""

import pytest

from helpers import bench


def results(train_speedup=2.4, tuning_speedup=18.0, p50_ratio=1.1, overhead=3.0, chapters=300.0, pruned_best=0.9,
            batched_rps=140.0, abuse_rss=2.0):
    row = dict(epochs=2, image_size=224, device="cpu", seconds=1.0, images_per_s=10.0)
    return {
        "training": [
            {**row, "variant": "seed-style, trainable backbone (decode every epoch, 0 workers, fp32)",
             "valid_accuracy": 0.80, "speedup": 1.0},
            {**row, "variant": "ours, trainable backbone (decoded-image cache, bfloat16 autocast, channels-last)",
             "valid_accuracy": 0.82, "speedup": train_speedup},
            {**row, "variant": "seed-style, frozen backbone (decode every epoch, 0 workers, fp32)",
             "valid_accuracy": 0.5, "speedup": 1.0},
            {**row, "variant": "ours, frozen backbone (feature cache)", "valid_accuracy": 0.5, "speedup": 4.0},
        ],
        "hpo": [{"variant": "feature cache + pruning", "trials": 8, "wall_s": 1.0, "best_objective": pruned_best,
                 "pruned": 3, "speedup": tuning_speedup},
                {"variant": "feature cache only", "trials": 8, "wall_s": 2.0, "best_objective": 0.9,
                 "pruned": 0, "speedup": tuning_speedup / 2},
                {"variant": "no cache, no pruning", "trials": 8, "wall_s": 18.0, "best_objective": 0.88,
                 "pruned": 0, "speedup": 1.0}],
        "serving": [
            {"setup": "in-process handler (floor)", "batching": "", "concurrency": 1, "p50_vs_floor": 1.0,
             "req_per_s": 90.0},
            {"setup": "pytorch container (TorchServe-style)", "batching": "none", "concurrency": 1,
             "p50_vs_floor": 1.2, "req_per_s": 70.0},
            {"setup": "pytorch container (TorchServe-style)", "batching": "none", "concurrency": 16,
             "p50_vs_floor": 9.0, "req_per_s": 60.0},
            {"setup": "pytorch container (TorchServe-style)", "batching": "none", "concurrency": 16, "requests": 600,
             "abuse": "a quarter bad", "wrong": 0, "errors_5xx": 0, "rss_change_pct": abuse_rss},
            {"setup": "ray-serve container", "batching": "16 / 5 ms", "concurrency": 1, "p50_vs_floor": p50_ratio,
             "req_per_s": 60.0},
            {"setup": "ray-serve container", "batching": "16 / 5 ms", "concurrency": 16, "p50_vs_floor": 4.0,
             "req_per_s": batched_rps},
            {"setup": "ray-serve container", "batching": "1 / 0 ms", "concurrency": 16, "p50_vs_floor": 8.0,
             "req_per_s": 50.0},
        ],
        "overhead": [{"variant": "off", "overhead_pct": 0.0, "first_epoch_overhead_pct": 0.0},
                     {"variant": "hook + profiler", "overhead_pct": overhead, "first_epoch_overhead_pct": 20.0},
                     {"variant": bench.TRACKED, "overhead_pct": overhead + 2, "first_epoch_overhead_pct": 25.0}],
        "hardware": [
            {"measure": "matmul 1024x1024 float32 on cpu (the machine's limit)", "precision": "float32",
             "gflop_per_s": 180.0, "share_of_limit": 1.0},
            {"measure": "training step, seed-style (fp32), ...", "precision": "float32", "gflop_per_s": 144.0,
             "share_of_limit": 0.8},
            {"measure": "training step, ours (bfloat16 autocast, channels-last), ...", "precision": "bfloat16",
             "gflop_per_s": 360.0, "share_of_limit": 0.9},
        ],
        "chapters": [{"chapter": "01_data", "seconds": chapters}, {"chapter": "all chapters", "seconds": chapters}],
    }


def test_findings_state_each_ratio_against_its_target():
    lines = bench.findings(results())
    text = "\n".join(lines)
    assert len(lines) == 11 and "NOT met" not in text
    assert "ours (decoded-image cache, bfloat16 autocast, channels-last) ran 2.4x" in lines[0]
    assert "accuracy 0.82 vs 0.80" in lines[0]
    assert "frozen backbone: ours (feature cache) ran 4.0x" in lines[1]
    assert "feature cache only: 9.0x faster, best objective 0.900 vs 0.880" in lines[2]
    assert "feature cache + pruning: 18.0x faster" in lines[3] and "stopped a trial" not in lines[3]
    assert "Ray Serve endpoint's p50 at concurrency 1 is 1.10x the in-process handler's" in lines[4]
    assert "with batching (16 / 5 ms) served 140 req/s against 60" in lines[5] and ": 2.3x" in lines[5]
    assert "0 wrong answers, 0 5xx, memory +2.0%" in lines[6]
    assert "+3.0% step time once running" in lines[7] and "+20.0% on the first epoch" in lines[7]
    assert "With MLflow tracking (system metrics every second) and TensorBoard histograms as well: +5.0%" in lines[8]
    assert "80% of the measured float32" in lines[9] and "90% of the bfloat16" in lines[9] and "2.5x" in lines[9]
    assert "300 s" in lines[10]


def test_missed_targets_are_said_so():
    lines = bench.findings(results(train_speedup=1.5, tuning_speedup=4.0, p50_ratio=1.4, overhead=12.0,
                                   chapters=700.0, batched_rps=100.0, abuse_rss=15.0))
    assert sum("NOT met" in line for line in lines) == 9  # both tuning variants under 5x, both overheads


def test_a_pruned_best_trial_misses_the_tuning_target():
    lines = [line for line in bench.findings(results(pruned_best=0.8)) if "pruning" in line]
    assert "0.800 vs 0.880 (the pruner stopped a trial that would have ended better)" in lines[0]
    assert "NOT met" in lines[0]


def test_a_quick_run_is_not_judged():
    lines = bench.findings(results(train_speedup=1.5, overhead=12.0), judge=False)
    assert len(lines) == 11 and not any("target" in line for line in lines)
    assert "ran 1.5x the seed-style loop's images/s over 2 epoch(s); validation" in lines[0]


def test_partial_results_give_the_lines_they_can():
    assert bench.findings({"training": [], "chapters": []}) == []
    assert len(bench.findings({"overhead": results()["overhead"]})) == 2


def test_ray_serves_own_round_trip_explains_a_missed_latency_target():
    serving = results()["serving"]
    floor = {**serving[0], "p50_ms": 15.0}
    slow = [floor, *serving[1:], {"setup": bench.EMPTY_RAY, "batching": "", "concurrency": 1, "p50_ms": 12.0}]
    line = next(line for line in bench.findings({"serving": slow}) if "own round trip" in line)
    assert "12.0 ms at p50, 0.80x the handler's 15.0 ms" in line
    assert "cannot come within 1.3x" in line and "under 0.3x, 4.5 ms" in line
    fast = [{**floor, "p50_ms": 100.0}, *serving[1:], slow[-1]]
    line = next(line for line in bench.findings({"serving": fast}) if "own round trip" in line)
    assert "0.12x the handler's 100.0 ms" in line and "cannot" not in line


def test_the_appendix_reads_full_reference_runs_only(tmp_path):
    import json

    (tmp_path / "cpu.json").write_text(json.dumps({"quick": False, "hpo": [{"variant": "a", "speedup": 2.0}]}))
    (tmp_path / "gpu.json").write_text(json.dumps({"quick": False, "hpo": [{"variant": "a", "speedup": 9.0}]}))
    (tmp_path / "ci.json").write_text(json.dumps({"quick": True, "hpo": [{"variant": "a", "speedup": 50.0}]}))
    runs = bench.reference_runs(tmp_path)
    assert list(runs) == ["cpu", "gpu"]
    table = bench.runs_table(runs, "hpo")
    assert table.to_dict("records") == [{"run": "cpu", "variant": "a", "speedup": 2.0},
                                        {"run": "gpu", "variant": "a", "speedup": 9.0}]
    assert bench.runs_table(runs, "serving").empty


def test_two_machines_named_alike_are_told_apart_by_their_vector_units():
    assert bench.vector_extensions("flags : fpu sse2 avx2 avx512f avx512_bf16") == "AVX512-BF16"
    assert bench.vector_extensions("flags : fpu sse2 avx2") == "AVX2"
    assert bench.vector_extensions("flags : fpu") == ""
    line = bench.describe({"cpu": "AMD EPYC", "vector": "AVX2", "cores": 2, "torch": "2.14", "gpu": None,
                           "date": "2026-11-22"})
    assert line == "AMD EPYC (AVX2), 2 cores, no GPU, torch 2.14, measured 2026-11-22"


@pytest.mark.reliability
def test_every_bad_request_of_the_abuse_mix_is_the_clients_mistake():
    """The mix holds the issue's probes (empty arrays, nested JSON, a request of many large images, ...), and
    the handlers answer each with a 4xx before any model runs."""
    from helpers.runtime import inference

    bad = bench._bad_requests()
    statuses = []
    for body, content_type, expected in bad:
        assert expected is None
        with pytest.raises(inference.InferenceError) as e:
            inference.input_fn(body, content_type)
        statuses.append(e.value.status_code)
    assert all(400 <= s < 500 for s in statuses) and len(set(bad)) == len(bad)
    kinds = {ct for _, ct, _ in bad}
    assert {"application/x-npy", "application/json", "image/png", "text/csv"} <= kinds
