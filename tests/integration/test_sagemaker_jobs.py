"""The requests SDK v3 sends for the chapters' training and tuning jobs, as the local SageMaker receives them."""

import json
from pathlib import Path

import boto3
import pytest

from helpers import hpo, sagemaker_jobs
from helpers.config import SAGEMAKER_FRAMEWORK_VERSION, RunConfig
from helpers.runtime.metrics import METRIC_REGEXES, metric_definitions

pytestmark = pytest.mark.aws

ROLE = "arn:aws:iam::123456789012:role/SageBookExecutionRole"
DATA = {"s3_uri": "s3://sagebook-test/run/data/digits",
        "splits": {"train": "/x/digits/train", "valid": "/x/digits/valid", "test": "/x/digits/test"}}


@pytest.fixture
def aws(local_sagemaker, monkeypatch, tmp_path):
    """``(cfg, sdk session, sent)``: ``sent[op]`` is the last request of ``op`` exactly as botocore sent it."""
    from helpers import session

    for k, v in local_sagemaker.environ().items():
        monkeypatch.setenv(k, v)
    boto_session = boto3.Session(region_name="us-east-1")
    cfg = RunConfig(backend="sagemaker", s3_prefix="s3://sagebook-test/run", region="us-east-1",
                    work_dir=str(tmp_path))
    session.execution_role(cfg.replace(backend="local"), boto_session)  # the role exists, as on an account
    sent: list = []
    boto_session.events.register("before-parameter-build.sagemaker",
                                 lambda params, model, **kw: sent.append((model.name, json.loads(json.dumps(
                                     params, default=str)))))

    class Last(dict):
        def __getitem__(self, name):
            return [p for n, p in sent if n == name][-1]

    yield cfg, sagemaker_jobs.sdk_session(cfg, boto_session), Last()


def test_training_job_request(aws):
    cfg, sess, sent = aws
    trainer = sagemaker_jobs.model_trainer(cfg, sess, role=ROLE, hyperparameters={"lr": 0.01, "epochs": 3},
                                           base_job_name="sb-test", instance_count=2, use_spot=True)
    trainer.train(input_data_config=sagemaker_jobs.inputs(DATA), wait=False, logs=False)
    d = sent["CreateTrainingJob"]
    spec = d["AlgorithmSpecification"]
    assert f"pytorch-training:{SAGEMAKER_FRAMEWORK_VERSION}" in spec["TrainingImage"]
    assert {m["Name"]: m["Regex"] for m in spec["MetricDefinitions"]} == METRIC_REGEXES
    assert spec["ContainerEntrypoint"]  # v3 runs its sm_drivers script, which starts torchrun
    assert d["HyperParameters"]["lr"] == "0.01" and d["HyperParameters"]["epochs"] == "3"
    chans = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in d["InputDataConfig"]}
    assert {k: v for k, v in chans.items() if k in DATA["splits"]} == {
        "train": "s3://sagebook-test/run/data/digits/train", "valid": "s3://sagebook-test/run/data/digits/valid",
        "test": "s3://sagebook-test/run/data/digits/test"}
    assert {"code", "sm_drivers"} <= set(chans)  # the staged source dir and the SDK's drivers
    assert d["ResourceConfig"]["InstanceCount"] == 2 and d["EnableManagedSpotTraining"] is True
    assert d["StoppingCondition"]["MaxWaitTimeInSeconds"] == 2 * d["StoppingCondition"]["MaxRuntimeInSeconds"]
    assert d["CheckpointConfig"]["S3Uri"].startswith("s3://sagebook-test/run/checkpoints/sb-test-")
    assert d["OutputDataConfig"]["S3OutputPath"] == "s3://sagebook-test/run/output"
    # no Debugger or Profiler service settings: closed to new customers (v2 turned the profiler on by default)
    assert not {"ProfilerConfig", "ProfilerRuleConfigurations", "DebugHookConfig", "DebugRuleConfigurations"} & set(d)
    drivers = sess.boto_session.client("sagemaker").describe_training_job(TrainingJobName=d["TrainingJobName"])
    assert drivers["TrainingJobName"] == d["TrainingJobName"]  # the local SageMaker took it


def test_each_trainer_checkpoints_under_its_own_prefix(aws):
    """SageMaker restores all of a job's CheckpointConfig.S3Uri into it: two trainers of a run (the six starts,
    the tuner, the final job) must not share one, or each job downloads every earlier job's checkpoints."""
    cfg, sess, sent = aws
    uris = [sagemaker_jobs.model_trainer(cfg, sess, role=ROLE, hyperparameters={"lr": 0.01},
                                         base_job_name="sb-start").checkpoint_config.s3_uri for _ in range(2)]
    assert uris[0] != uris[1] and all(u.startswith("s3://sagebook-test/run/checkpoints/sb-start-") for u in uris)
    assert not uris[1].startswith(uris[0])  # neither prefix holds the other


def test_only_a_debugger_job_ships_smdebug(aws):
    """Tuning trials do not register the hook: their requirements.txt leaves smdebug (and its build) out."""
    cfg, sess, _ = aws

    def requirements(hyperparameters, **kw):
        trainer = sagemaker_jobs.model_trainer(cfg, sess, role=ROLE, hyperparameters=hyperparameters,
                                               base_job_name="sb-test", **kw)
        # staged in the work folder, where it goes with the run, not in a temp folder that nobody removes
        assert Path(trainer.source_code.source_dir) == Path(cfg.work_dir) / "source" / "sb-test"
        return (Path(trainer.source_code.source_dir) / "requirements.txt").read_text().split()

    static = hpo.static_hyperparameters(cfg)
    assert not [r for r in requirements(static) if r.startswith(("smdebug", "mlflow", "sagemaker-mlflow"))]
    assert "tqdm" in " ".join(requirements(static))
    assert [r for r in requirements({**static, "debugger": True}) if r.startswith("smdebug==")]
    tracked = requirements(static, environment={"MLFLOW_TRACKING_URI": "arn:aws:sagemaker:us-east-1:111122223333:"
                                                                       "mlflow-tracking-server/book"})
    assert {r.split("==")[0] for r in tracked} >= {"mlflow-skinny", "sagemaker-mlflow", "tensorboard"}


def test_a_tracked_job_carries_its_environment_and_tensorboard_output(aws):
    cfg, sess, sent = aws
    env = {"MLFLOW_TRACKING_URI": "arn:aws:sagemaker:us-east-1:111122223333:mlflow-tracking-server/book",
           "MLFLOW_EXPERIMENT_NAME": "sagebook"}
    trainer = sagemaker_jobs.model_trainer(cfg, sess, role=ROLE, hyperparameters={"lr": 0.01},
                                           base_job_name="sb-final", environment=env, tensorboard=True)
    trainer.train(input_data_config=sagemaker_jobs.inputs(DATA), wait=False, logs=False)
    d = sent["CreateTrainingJob"]
    assert d["Environment"] == env
    assert d["TensorBoardOutputConfig"] == {"S3OutputPath": "s3://sagebook-test/run/tensorboard",
                                            "LocalPath": "/opt/ml/output/tensorboard"}
    job = trainer._latest_training_job
    assert sagemaker_jobs.tensorboard_output_path(job) == (
        f"s3://sagebook-test/run/tensorboard/{d['TrainingJobName']}/tensorboard-output")


def test_tuning_job_request(aws):
    from sagemaker.train.tuner import HyperparameterTuner

    cfg, sess, sent = aws
    static = hpo.static_hyperparameters(cfg)
    env = {"MLFLOW_TRACKING_URI": "sqlite:////tmp/store.db", "MLFLOW_PARENT_RUN_ID": "p1"}
    trainer = sagemaker_jobs.model_trainer(cfg, sess, role=ROLE, hyperparameters=static, base_job_name="sb-hpo",
                                           environment=env)
    tuner = HyperparameterTuner(trainer, objective_metric_name="valid:accuracy", objective_type="Maximize",
                                metric_definitions=metric_definitions(), hyperparameter_ranges=hpo.sagemaker_ranges(),
                                max_jobs=6, max_parallel_jobs=2, early_stopping_type="Auto",
                                base_tuning_job_name="sb-hpo")
    tuner.tune(inputs=sagemaker_jobs.inputs(DATA, ("train", "valid")), wait=False)
    d = sent["CreateHyperParameterTuningJob"]
    conf = d["HyperParameterTuningJobConfig"]
    assert conf["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "valid:accuracy"}
    assert conf["ResourceLimits"]["MaxNumberOfTrainingJobs"] == 6
    assert conf["TrainingJobEarlyStoppingType"] == "Auto"
    ranges = conf["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"] == [
        {"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}]
    assert ranges["IntegerParameterRanges"][0]["Name"] == "epochs"
    cat = ranges["CategoricalParameterRanges"][0]
    assert cat["Name"] == "batch_size" and [str(json.loads(v)) for v in cat["Values"]] == ["32", "64", "128"]
    job = d["TrainingJobDefinition"]
    assert {m["Name"] for m in job["AlgorithmSpecification"]["MetricDefinitions"]} == set(METRIC_REGEXES)
    hp = job["StaticHyperParameters"]
    assert hp["sagemaker_program"].strip('"') == "train.py"  # trials take the container's toolkit path
    assert hp["sagemaker_submit_directory"].strip('"').startswith("s3://sagebook-test/")
    assert hp["backbone"].strip('"') == "efficientnet_lite0" and "lr" not in hp
    assert job["CheckpointConfig"]["S3Uri"].startswith("s3://sagebook-test/run/checkpoints/")  # one for all trials
    assert {c["ChannelName"] for c in job["InputDataConfig"]} >= {"train", "valid"}
    assert "test" not in {c["ChannelName"] for c in job["InputDataConfig"]}  # never the test split
    assert job["Environment"] == env  # every trial tracks into the parent run
    try:  # its trials find no data here, so the job may have failed already
        tuner.stop_tuning_job()
    except Exception as e:  # noqa: BLE001
        assert "cannot be stopped" in str(e)


def test_inputs_need_the_s3_upload():
    with pytest.raises(ValueError, match="chapter 01_data"):
        sagemaker_jobs.inputs({"splits": {}, "s3_uri": None})


@pytest.mark.parametrize("name, raw, value", [("batch_size", '"64"', 64), ("epochs", '"5"', 5), ("lr", '"0.0123"', 0.0123),
                                              ("batch_size", "128", 128)])
def test_tuned_values_come_back_typed(name, raw, value):
    got = hpo.coerce(name, sagemaker_jobs.parse_hyperparameter(raw))
    assert got == value and type(got) is type(value)


def test_sdk_session_opts_out_of_telemetry(aws):
    from sagemaker.core.config.config_schema import TELEMETRY_OPT_OUT_PATH
    from sagemaker.core.common_utils import resolve_value_from_config

    _, sess, _ = aws
    assert resolve_value_from_config(None, TELEMETRY_OPT_OUT_PATH, False, sess) is True
    assert sess.default_bucket() == "sagebook-test" and sess.default_bucket_prefix == "run"


def test_a_missing_weights_file_is_refused_before_submitting(aws):
    cfg, sess, sent = aws
    with pytest.raises(ValueError, match="nor a file on this machine"):
        sagemaker_jobs.model_trainer(cfg, sess, role=ROLE, hyperparameters={"weights": "/no/such/weights.pth"},
                                     base_job_name="sb-test")


def test_the_sdk_checks_a_config_once_and_an_invalid_one_every_time(monkeypatch):
    """``ModelTrainer.train()`` looks up nine config values, and the SDK checked the config's whole JSON
    schema on each: 4 s of every job's start on 2 cores. After ``sdk_session`` it is checked once."""
    import jsonschema
    from sagemaker.core.config import config_manager
    from sagemaker.core.common_utils import get_sagemaker_config_value

    sagemaker_jobs.validate_each_config_once()
    calls = []
    real = jsonschema.validate
    monkeypatch.setattr(config_manager.jsonschema, "validate", lambda *a, **kw: (calls.append(1), real(*a, **kw)))
    config = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": False}}}}
    for _ in range(3):
        assert get_sagemaker_config_value(None, "SageMaker.PythonSDK.Modules.TelemetryOptOut",
                                          sagemaker_config=config) is False
    assert len(calls) == 1
    bad = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": "maybe"}}}}
    for _ in range(2):
        with pytest.raises(jsonschema.ValidationError):
            get_sagemaker_config_value(None, "SageMaker.PythonSDK.Modules.TelemetryOptOut", sagemaker_config=bad)
    assert len(calls) == 3
