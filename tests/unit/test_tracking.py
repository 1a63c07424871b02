"""MLflow tracking and TensorBoard from the entry point, and the notebook side that reads them back."""

import json
import socket

import pandas as pd
import pytest

from helpers import tracking
from helpers.config import ConfigError, RunConfig
from helpers.runtime import tracking as tracking_module
from helpers.runtime import train
from helpers.runtime.tracking import MlflowRun, console_url, tensorboard_dir

ARGS = ["--image_size", "32", "--batch_size", "8", "--epochs", "2", "--lr", "0.01", "--num_workers", "0"]


def run_entry_point(synthetic_root, tmp_path, capsys, env, *extra):
    out = tmp_path / "job"
    argv = ["--data-dir", str(synthetic_root), "--model-dir", str(out / "model"), "--output-dir",
            str(out / "output"), *ARGS, *extra]
    code = train.main(argv, env={"TRAINING_JOB_NAME": "job-1",
                                 "TRAINING_JOB_ARN": "arn:aws:sagemaker:eu-west-1:123456789012:training-job/job-1",
                                 **env})
    return code, capsys.readouterr().out, out


def store(tmp_path):
    cfg = RunConfig(work_dir=str(tmp_path / "work"), dataset="synthetic")
    client = tracking.client(cfg)
    return cfg, client, tracking.experiment_id(client, cfg)


def metric_lines(stdout):
    return [line for line in stdout.splitlines() if line.startswith("#metrics")]


@pytest.mark.slow
def test_the_entry_point_logs_its_run_with_epochs_system_metrics_artifacts_and_a_link(synthetic_root, tmp_path,
                                                                                      capsys):
    cfg, client, exp = store(tmp_path)
    env = tracking.job_environment(cfg)
    code, stdout, out = run_entry_point(synthetic_root, tmp_path, capsys, env, "--tensorboard", "true")
    assert code == 0
    run = tracking.job_run(client, exp, "job-1")
    assert run.info.status == "FINISHED" and run.info.run_name == "job-1"
    assert run.data.params["lr"] == "0.01" and run.data.params["tensorboard"] == "True"
    curves = tracking.epoch_curves(client, run.info.run_id)
    assert list(curves.index) == [1, 2] and curves.notna().all().all()
    history = json.loads((out / "output" / "metrics.json").read_text())["history"]
    assert curves.valid_loss.tolist() == pytest.approx([h["valid_loss"] for h in history])
    assert run.data.metrics["test_accuracy"] == pytest.approx(
        json.loads((out / "output" / "metrics.json").read_text())["test"]["accuracy"])
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    assert run.data.tags["sagemaker.training_job_url"] == console_url(
        "arn:aws:sagemaker:eu-west-1:123456789012:training-job/job-1")
    assert "eu-west-1.console.aws.amazon.com" in run.data.tags["sagemaker.training_job_url"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"model_config.json", "metrics.json"}
    assert f"MLflow run {run.info.run_id}" in stdout
    # TensorBoard: the scalars of every epoch, and histograms of the trained layer's weights and gradients
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "output" / "tensorboard"), size_guidance={"histograms": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("loss/valid")] == [1, 2]
    assert events.Scalars("accuracy/test")
    assert {"weights/weight", "biases/bias", "gradients/weight"} <= set(events.Tags()["histograms"])


@pytest.mark.slow
def test_an_unreachable_tracking_server_turns_tracking_off_once_and_the_job_loses_nothing(synthetic_root, tmp_path,
                                                                                        capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, plain, _ = run_entry_point(synthetic_root, tmp_path / "a", capsys, {})
    code_off, tracked, out = run_entry_point(synthetic_root, tmp_path / "b", capsys,
                                             {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    assert code == code_off == 0
    assert tracked.count("MLflow tracking is off") == 1
    assert "MLflow tracking is off for the rest of this job (starting the run failed" in tracked
    assert metric_lines(tracked) == metric_lines(plain) and len(metric_lines(plain)) == 6
    assert (out / "model" / "model.pth").is_file()


def test_a_tracking_failure_mid_job_is_said_once_and_later_calls_do_nothing():
    said = []
    run = MlflowRun({"MLFLOW_TRACKING_URI": "sqlite:///unused.db"}, emit=said.append)

    class Broken:
        calls = 0

        def log_batch(self, *a, **k):
            Broken.calls += 1
            raise ConnectionError("the server went away")

    run.client, run.run_id = Broken(), "r1"
    run.log_epoch(1, {"train_loss": 1.0})
    run.log_epoch(2, {"train_loss": 0.5})
    run.end()
    assert Broken.calls == 1 and run.enabled is False
    assert said == ["MLflow tracking is off for the rest of this job (logging metrics failed: the server went away); "
                    "training goes on, and the metric lines below are complete"]


def test_no_tracking_uri_means_no_run_and_no_message():
    said = []
    run = MlflowRun({}, emit=said.append)
    assert run.start({"lr": 1}) is None and said == [] and not run.enabled


def test_a_new_experiment_keeps_its_artifacts_beside_the_store_not_in_the_working_folder(tmp_path, monkeypatch):
    """MLflow's default for a SQLite store is ``./mlruns`` of whatever folder the job runs from."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    run = MlflowRun({"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "fresh"}, emit=lambda line: None)
    assert run.start({"lr": 1}, system_metrics=False)
    run.log_artifacts([tmp_path / "notes.txt"])
    run.end()
    assert not (tmp_path / "elsewhere" / "mlruns").exists()
    assert list((tmp_path / "store" / "artifacts").rglob("notes.txt"))
    assert tracking_module.artifact_location("http://127.0.0.1:5000") is None


def test_tensorboard_goes_where_tensorboard_output_config_says(tmp_path):
    out = tmp_path / "output" / "data"
    assert tensorboard_dir({}, out, wanted=False) is None
    assert tensorboard_dir({}, out, wanted=True) == out / "tensorboard"
    config = tmp_path / "config"
    config.mkdir()
    (config / "tensorboardoutputconfig.json").write_text(json.dumps({"LocalPath": str(tmp_path / "tb"),
                                                                      "S3OutputPath": "s3://b/tb"}))
    assert tensorboard_dir({"SM_INPUT_CONFIG_DIR": str(config)}, out, wanted=False) == tmp_path / "tb"
    (config / "tensorboardoutputconfig.json").write_text(json.dumps({"S3OutputPath": "s3://b/tb"}))
    assert str(tensorboard_dir({"SM_INPUT_CONFIG_DIR": str(config)}, out, wanted=False)) == "/opt/ml/output/tensorboard"


def test_trials_are_reconciled_with_the_tuning_job_and_read_back_in_its_shape(tmp_path):
    cfg, client, exp = store(tmp_path)
    parent = tracking.start_parent_run(client, exp, "hpo", {"backbone": "resnet18"})
    # Trial 1 finished by itself; trial 2 was stopped early while its run was RUNNING; trial 3 never started.
    for job, lr in (("t-001", "0.01"), ("t-002", "0.001")):
        r = MlflowRun({"MLFLOW_TRACKING_URI": tracking.tracking_uri(cfg), "MLFLOW_PARENT_RUN_ID": parent,
                       "TRAINING_JOB_NAME": job}, emit=lambda line: None)
        r.start({"lr": lr, "batch_size": 16, "epochs": 2}, system_metrics=False)
        r.log_epoch(1, {"valid_accuracy": 0.5})
        if job == "t-001":
            r.log_epoch(2, {"valid_accuracy": 0.75})
            r.end()
    summaries = [
        {"TrainingJobName": "t-001", "TrainingJobStatus": "Completed",
         "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "valid:accuracy", "Value": 0.75}},
        {"TrainingJobName": "t-002", "TrainingJobStatus": "Stopped",
         "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "valid:accuracy", "Value": 0.5}},
        {"TrainingJobName": "t-003", "TrainingJobStatus": "Failed",
         "TunedHyperParameters": {"lr": "0.1", "batch_size": "32", "epochs": "3"}},
    ]
    tracking.reconcile_trials(client, exp, parent, "hpo-261121", summaries, "valid:accuracy")
    trials = tracking.trial_runs(client, exp, parent, ("lr", "batch_size", "epochs"))
    shown = trials[["number", "state", "value", "lr", "epochs_run", "job"]]
    assert shown.astype(object).where(shown.notna(), None).to_dict("records") == [
        {"number": 0, "state": "COMPLETE", "value": 0.75, "lr": 0.01, "epochs_run": 2, "job": "t-001"},
        {"number": 1, "state": "PRUNED", "value": 0.5, "lr": 0.001, "epochs_run": 1, "job": "t-002"},
        {"number": 2, "state": "FAIL", "value": None, "lr": 0.1, "epochs_run": None, "job": "t-003"},
    ]
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(parent).data.metrics["best_objective"] == 0.75
    assert client.get_run(parent).data.tags["sagemaker.tuning_job_name"] == "hpo-261121"
    tuner = pd.DataFrame([{"job": "t-001", "state": "COMPLETE", "value": 0.75},
                          {"job": "t-002", "state": "PRUNED", "value": 0.5},
                          {"job": "t-003", "state": "FAIL", "value": float("nan")}])
    assert tracking.disagreements(trials, tuner) == []
    tuner.loc[1, "state"], tuner.loc[0, "value"] = "COMPLETE", 0.7
    assert tracking.disagreements(trials, tuner) == ["t-001: objective 0.75 in MLflow, 0.7 in the tuning job",
                                                     "t-002: PRUNED in MLflow, COMPLETE in the tuning job"]


def test_the_local_store_is_in_the_work_folder_and_aws_needs_a_tracking_server_arn(tmp_path):
    cfg = RunConfig(work_dir=str(tmp_path / "w"))
    assert tracking.tracking_uri(cfg) == f"sqlite:///{tmp_path / 'w' / 'mlflow' / 'mlflow.db'}"
    assert tracking.ui_command(cfg).startswith(f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/w/mlflow/")
    aws = RunConfig(backend="sagemaker", s3_prefix="s3://b/p", work_dir=str(tmp_path / "w"))
    assert not tracking.enabled(aws)
    arn = "arn:aws:sagemaker:us-east-1:111122223333:mlflow-tracking-server/book"
    with_server = RunConfig(backend="sagemaker", s3_prefix="s3://b/p", work_dir=str(tmp_path / "w"), mlflow_arn=arn)
    assert tracking.enabled(with_server) and tracking.job_environment(with_server, parent_run_id="p1") == {
        "MLFLOW_TRACKING_URI": arn, "MLFLOW_EXPERIMENT_NAME": "sagebook", "MLFLOW_PARENT_RUN_ID": "p1"}
    with pytest.raises(ConfigError, match="mlflow_arn must be a SageMaker MLflow ARN"):
        RunConfig(mlflow_arn="http://my-server:5000")
