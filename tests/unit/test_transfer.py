import math

from helpers import transfer
from helpers.runtime.settings import TrainConfig


def rows(**acc):
    labels = [s.label for s in transfer.STARTS]
    seconds = [3, 3, 2, 9, 12, 40]
    return [{"start": label, "status": "Completed", "valid accuracy": a, "epochs": 4, "seconds": s}
            for label, a, s in zip(labels, acc.get("values", [0.9] * 6), seconds)]


def test_every_start_is_a_valid_job_of_the_run():
    static = {"backbone": "efficientnet_lite0", "weights": "DEFAULT", "image_size": 64, "freeze_backbone": True}
    jobs = [transfer.hyperparameters(static, s) for s in transfer.STARTS]
    for job in jobs:
        TrainConfig.from_dict(job)  # the entry point accepts every start
    assert jobs[0]["weights"] == "none" and all(j["weights"] == "DEFAULT" for j in jobs[1:])
    assert {(j["freeze_backbone"], j.get("finetune")) for j in jobs[4:]} == {(False, "last"), (False, "all")}
    assert len({tuple(sorted(j.items())) for j in jobs}) == len(jobs)  # no two starts are the same job
    # the same short schedule on the same sample of the train split: the rows differ only where their names do
    assert {(j["epochs"], j["max_per_class"]) for j in jobs} == {(transfer.SHARED["epochs"], 64)}


def test_a_row_from_describe_training_job():
    desc = {"TrainingJobStatus": "Completed", "TrainingTimeInSeconds": 7,
            "FinalMetricDataList": [{"MetricName": "valid:accuracy", "Value": 0.91},
                                    {"MetricName": "epoch", "Value": 4.0}]}
    row = transfer.job_row(transfer.STARTS[1], desc)
    assert row == {"start": "pretrained, frozen", "status": "Completed", "valid accuracy": 0.91, "epochs": 4,
                   "seconds": 7}
    failed = transfer.job_row(transfer.STARTS[0], {"TrainingJobStatus": "Failed"})
    assert math.isnan(failed["valid accuracy"]) and failed["status"] == "Failed"


def test_small_gain_on_digits_is_explained_by_the_domain_gap():
    lines = transfer.insights(rows(values=[0.93, 0.94, 0.94, 0.90, 0.97, 0.98]), "digits", "DEFAULT")
    assert "help little" in lines[0] and "domain gap" in lines[0] and "94.0%" in lines[0] and "93.0%" in lines[0]
    assert "last stage tuned" in lines[1] and "gains 3.0 points" in lines[1] and "12 s against 3 s" in lines[1]
    assert "all layers tuned" in lines[2] and "gains 4.0 points" in lines[2] and "40 s against 3 s" in lines[2]
    assert "computed once and cached" in lines[3]
    assert "adds 4.0 points" in lines[4] and "the domain gap" in lines[4] and "handwritten digits" in lines[4]
    assert "`mlp head` scores the same" in lines[5]
    assert "`augmented` scores 4.0 points worse" in lines[6]


def test_pretrained_features_below_random_ones_are_said_to_do_worse_not_to_help_little():
    """The issue's own measurement on digits: 94.7% pretrained and frozen against 96.9% random and frozen."""
    lines = transfer.insights(rows(values=[0.969, 0.947, 0.95, 0.95, 0.97, 0.98]), "digits", "DEFAULT")
    assert "do worse than random ones on `digits`, by 2.2 points" in lines[0] and "help little" not in lines[0]
    assert "domain gap" in lines[0]


def test_a_large_gain_is_reported_as_what_the_weights_are_worth():
    lines = transfer.insights(rows(values=[0.30, 0.80, 0.82, 0.81, 0.78, 0.70]), "dogImages", "DEFAULT")
    assert lines[0].startswith("ImageNet features are worth 50.0 points")
    assert "last stage tuned" in lines[1] and "loses 2.0 points" in lines[1]


def test_without_pretrained_weights_the_comparison_says_it_cannot_tell():
    lines = transfer.insights(rows(), "digits", "none")
    assert "cannot show what ImageNet features are worth" in lines[0]


def test_no_domain_gap_is_claimed_when_fine_tuning_adds_nothing():
    lines = transfer.insights(rows(values=[0.30, 0.80, 0.82, 0.81, 0.80, 0.805]), "dogImages", "DEFAULT")
    assert not any("domain gap" in line for line in lines)


def _folder(root, counts):
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{i}.png").write_bytes(b"")  # listed by name, never decoded
    return root


def test_the_schedule_is_said_from_shared_and_the_split_itself(tmp_path):
    train = _folder(tmp_path / "train", {"a": 5, "b": 2, "c": 3})
    line = transfer.schedule(train, {"epochs": 2, "batch_size": 16, "max_per_class": 3})
    assert line.startswith("Every start trains for 2 epochs in batches of 16")
    assert "at most 3 training images per class" in line and "8 of the 10 training images of 3 classes" in line
    assert "validation uses the whole split" in line
    assert "on all 10 training images" in transfer.schedule(train, {"epochs": 1, "batch_size": 4, "max_per_class": 0})
    assert "1 epoch in" in transfer.schedule(train, {"epochs": 1, "batch_size": 4})


def test_chapter_2_prints_the_schedule_rather_than_stating_it_by_hand():
    import json
    from pathlib import Path

    cells = json.loads((Path(__file__).parents[2] / "notebooks" / "02_hpo.ipynb").read_text())["cells"]
    code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    prose = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "transfer.schedule(" in code
    assert f"at most {transfer.SHARED['max_per_class']}" not in prose and "two epochs" not in prose


def test_the_schedule_is_said_without_importing_torch(tmp_path):
    import subprocess
    import sys

    train = _folder(tmp_path / "train", {"a": 2, "b": 1})
    code = ("import sys; from helpers import transfer; "
            f"print(transfer.schedule(__import__('pathlib').Path({str(train)!r}))); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "3 training images" in out and out.strip().endswith("False")  # chapter 2's kernel stays torch-free
