"""Tuning jobs on the local SageMaker, driven with plain boto3: trials are training jobs, the strategy runs locally."""

import time

import pytest
from botocore.exceptions import ClientError

from tests.integration.test_emulator_training import BUCKET, ROLE, SILENT, poll, put_sourcedir, write_script

pytestmark = pytest.mark.aws

# Reports the objective after each "epoch": its level plus a little per epoch, then the kept epoch's value.
LEVELS = '''import argparse, time
p = argparse.ArgumentParser()
p.add_argument("--level", type=float)
p.add_argument("--epochs", type=int)
a = p.parse_args()
for epoch in range(1, a.epochs + 1):
    print(f"#metrics split=valid epoch={epoch} accuracy={a.level + 0.01 * epoch:.4f}", flush=True)
    time.sleep(0.3)
print(f"#metrics split=valid epoch=best accuracy={a.level + 0.01 * a.epochs:.4f}")
'''
METRICS = [{"Name": "valid:accuracy", "Regex": r"split=valid epoch=\S+ accuracy=([0-9.]+)"}]


def tuning_request(name, submit, ranges, *, strategy="Bayesian", max_jobs=3, parallel=1, early="Off", seed=7,
                   static=None):
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy, "RandomSeed": seed, "TrainingJobEarlyStoppingType": early,
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "valid:accuracy"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": max_jobs, "MaxParallelTrainingJobs": parallel},
            "ParameterRanges": ranges},
        "TrainingJobDefinition": {
            "StaticHyperParameters": {"sagemaker_program": '"train.py"', "sagemaker_submit_directory": f'"{submit}"',
                                      **(static or {})},
            "AlgorithmSpecification": {"TrainingImage": "pytorch-training:2.6", "TrainingInputMode": "File",
                                       "MetricDefinitions": METRICS},
            "RoleArn": ROLE, "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/tuning"},
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
            "StoppingCondition": {"MaxRuntimeInSeconds": 300}}}


def wait_tuning(sm, name, timeout=300):
    return poll(lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name),
                "HyperParameterTuningJobStatus", timeout)


def trials_of(sm, name):
    return sm.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=name,
                                                                 SortBy="CreationTime")["TrainingJobSummaries"]


@pytest.fixture
def submit(local_sagemaker, tmp_path):
    return put_sourcedir(local_sagemaker.client("s3"), write_script(tmp_path / "src", LEVELS))


def test_three_trial_bayesian_tuning_completes_and_names_its_best_job(local_sagemaker, submit):
    sm = local_sagemaker.client("sagemaker")
    ranges = {"ContinuousParameterRanges": [{"Name": "level", "MinValue": "0.1", "MaxValue": "0.9"}]}
    arn = sm.create_hyper_parameter_tuning_job(**tuning_request("tune-bo", submit, ranges, static={"epochs": "2"}))
    assert arn["HyperParameterTuningJobArn"].endswith(":hyper-parameter-tuning-job/tune-bo")
    d = wait_tuning(sm, "tune-bo")
    assert d["HyperParameterTuningJobStatus"] == "Completed"
    assert d["TrainingJobStatusCounters"]["Completed"] == 3 and d["ObjectiveStatusCounters"]["Succeeded"] == 3
    trials = trials_of(sm, "tune-bo")
    assert [t["TrainingJobName"][:11] for t in trials] == ["tune-bo-001", "tune-bo-002", "tune-bo-003"]
    assert all(len(t["TrainingJobName"]) == len("tune-bo-001-") + 8 for t in trials)  # NAME-NNN-8 hex digits
    best = max(trials, key=lambda t: t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"])
    assert d["BestTrainingJob"]["TrainingJobName"] == best["TrainingJobName"]
    level = float(best["TunedHyperParameters"]["level"])  # the objective is the last value: the kept epoch
    assert best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == pytest.approx(level + 0.02, abs=1e-4)
    job = sm.describe_training_job(TrainingJobName=best["TrainingJobName"])  # a trial is a training job
    assert job["HyperParameters"]["epochs"] == "2" and job["HyperParameters"]["level"] == best["TunedHyperParameters"][
        "level"]


def test_auto_early_stopping_stops_trials_below_the_median(local_sagemaker, submit):
    sm = local_sagemaker.client("sagemaker")
    levels = ["0.8", "0.80", "0.800", "0.1", "0.11", "0.9"]  # equal good levels never fall below their median
    ranges = {"CategoricalParameterRanges": [{"Name": "level", "Values": levels}]}
    sm.create_hyper_parameter_tuning_job(**tuning_request("tune-es", submit, ranges, strategy="Grid", max_jobs=6,
                                                          early="Auto", seed=0, static={"epochs": "4"}))
    d = wait_tuning(sm, "tune-es")
    assert d["HyperParameterTuningJobStatus"] == "Completed"
    trials = trials_of(sm, "tune-es")  # in creation order, one at a time
    assert sorted(t["TunedHyperParameters"]["level"] for t in trials) == sorted(levels)  # the whole grid, once
    status = {t["TunedHyperParameters"]["level"]: t["TrainingJobStatus"] for t in trials}
    assert all(status[x] == "Completed" for x in ("0.8", "0.80", "0.800", "0.9")), status
    assert "Stopped" in (status["0.1"], status["0.11"]), status  # a poor trial after 3 others is stopped ...
    assert all(t["TrainingJobStatus"] == "Completed" for t in trials[:3])  # ... never one with too few before it
    stopped = [t for t in trials if t["TrainingJobStatus"] == "Stopped"]
    assert d["TrainingJobStatusCounters"]["Stopped"] == len(stopped)
    assert all(t["ObjectiveStatus"] == "Succeeded" and "FinalHyperParameterTuningJobObjectiveMetric" in t
               for t in stopped)  # a stopped trial still reports its objective
    assert d["BestTrainingJob"]["TunedHyperParameters"]["level"] == "0.9"


def test_stop_tuning_job_stops_its_trials(local_sagemaker, tmp_path):
    sm = local_sagemaker.client("sagemaker")
    submit = put_sourcedir(local_sagemaker.client("s3"), write_script(tmp_path / "slow", SILENT), "code/slow.tar.gz")
    ranges = {"ContinuousParameterRanges": [{"Name": "level", "MinValue": "0.1", "MaxValue": "0.9"}]}
    sm.create_hyper_parameter_tuning_job(**tuning_request("tune-stop", submit, ranges, max_jobs=4, parallel=2))
    deadline = time.monotonic() + 30
    while len(trials_of(sm, "tune-stop")) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName="tune-stop")
    d = wait_tuning(sm, "tune-stop", timeout=60)
    assert d["HyperParameterTuningJobStatus"] == "Stopped"
    assert {t["TrainingJobStatus"] for t in trials_of(sm, "tune-stop")} == {"Stopped"}
    assert len(trials_of(sm, "tune-stop")) == 2  # no trial starts after the stop


def test_bad_tuning_requests_get_validation_errors(local_sagemaker, submit):
    sm = local_sagemaker.client("sagemaker")
    ranges = {"ContinuousParameterRanges": [{"Name": "level", "MinValue": "0.1", "MaxValue": "0.9"}]}
    req = tuning_request("tune-bad", submit, ranges)
    req["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"] = "valid:loss"
    with pytest.raises(ClientError, match="valid:loss"):
        sm.create_hyper_parameter_tuning_job(**req)
    with pytest.raises(ClientError) as e:
        sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="never-created")
    assert e.value.response["Error"]["Code"] == "ResourceNotFound"
