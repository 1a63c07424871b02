"""Training and tuning jobs built by the SageMaker SDK and submitted to moto."""

import json

import boto3
import pytest

from helpers import hpo, sagemaker_jobs
from helpers.config import SAGEMAKER_FRAMEWORK_VERSION, RunConfig
from helpers.runtime.metrics import METRIC_REGEXES

from .conftest import ROLE

pytestmark = pytest.mark.aws


@pytest.fixture
def aws(sagemaker_env):
    """The session's requests by operation name (the last of each)."""
    cfg, sess, sent = sagemaker_env

    class Last(dict):
        def __getitem__(self, name):
            return [p for n, p in sent if n == name][-1]

    yield cfg, sess, Last()


DATA = {"s3_uri": "s3://sagebook-test/run/data/digits",
        "splits": {"train": "/x/digits/train", "valid": "/x/digits/valid", "test": "/x/digits/test"}}


def test_training_job_request(aws):
    cfg, sess, sent = aws
    est = sagemaker_jobs.estimator(cfg, role=ROLE, hyperparameters={"lr": 0.01, "epochs": 3}, sagemaker_session=sess,
                                   instance_count=2, use_spot=True)
    est.fit(sagemaker_jobs.channels(DATA), wait=False)
    d = sent["CreateTrainingJob"]
    assert sess.sagemaker_client.describe_training_job(TrainingJobName=d["TrainingJobName"])  # moto accepted it
    spec = d["AlgorithmSpecification"]
    assert f"pytorch-training:{SAGEMAKER_FRAMEWORK_VERSION}" in spec["TrainingImage"]
    assert {m["Name"]: m["Regex"] for m in spec["MetricDefinitions"]} == METRIC_REGEXES
    hp = d["HyperParameters"]
    assert json.loads(hp["lr"]) == 0.01 and json.loads(hp["sagemaker_program"]) == "train.py"
    assert json.loads(hp["sagemaker_torch_distributed_enabled"]) is True
    chans = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in d["InputDataConfig"]}
    assert chans == {"train": "s3://sagebook-test/run/data/digits/train",
                     "valid": "s3://sagebook-test/run/data/digits/valid",
                     "test": "s3://sagebook-test/run/data/digits/test"}
    assert d["ResourceConfig"]["InstanceCount"] == 2
    assert d["CheckpointConfig"]["S3Uri"] == "s3://sagebook-test/run/checkpoints"
    # the source_dir tarball was uploaded with the entry point, the helpers it imports and requirements.txt
    code = json.loads(hp["sagemaker_submit_directory"])
    assert code.startswith("s3://sagebook-test/run/code/")


def test_tuning_job_request(aws):
    cfg, sess, sent = aws
    static = hpo.static_hyperparameters(cfg)
    t = sagemaker_jobs.tune_sagemaker(cfg, DATA, role=ROLE, static=static, max_jobs=6, max_parallel_jobs=2,
                                      sagemaker_session=sess, wait=False)
    d = sent["CreateHyperParameterTuningJob"]
    assert sess.sagemaker_client.describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=t.latest_tuning_job.name)  # moto accepted it
    conf = d["HyperParameterTuningJobConfig"]
    assert conf["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "valid:accuracy"}
    assert conf["ResourceLimits"]["MaxNumberOfTrainingJobs"] == 6
    assert conf["TrainingJobEarlyStoppingType"] == "Auto"
    ranges = conf["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"] == [
        {"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}]
    assert ranges["IntegerParameterRanges"][0]["Name"] == "epochs"
    cat = ranges["CategoricalParameterRanges"][0]
    assert cat["Name"] == "batch_size" and [json.loads(v) for v in cat["Values"]] == ["32", "64", "128"]
    job = d["TrainingJobDefinition"]
    assert {m["Name"] for m in job["AlgorithmSpecification"]["MetricDefinitions"]} == set(METRIC_REGEXES)
    assert json.loads(job["StaticHyperParameters"]["backbone"]) == "resnet18"
    assert "lr" not in job["StaticHyperParameters"]
    assert {c["ChannelName"] for c in job["InputDataConfig"]} == {"train", "valid"}  # never the test split


def test_channels_need_the_s3_upload():
    with pytest.raises(ValueError, match="backend='sagemaker'"):
        sagemaker_jobs.channels({"splits": {}, "s3_uri": None})


@pytest.mark.parametrize("name, raw, value", [("batch_size", '"64"', 64), ("epochs", '"5"', 5), ("lr", '"0.0123"', 0.0123),
                                              ("batch_size", "128", 128)])
def test_tuned_values_come_back_typed(name, raw, value):
    got = hpo.coerce(name, sagemaker_jobs._parse_hp(raw))
    assert got == value and type(got) is type(value)


def test_final_training_without_the_debugger_service(aws):
    from helpers.runtime.debugger import Instrumentation

    cfg, sess, sent = aws
    inst = Instrumentation(debugger=True, profiler=True, train_save_interval=10, eval_save_interval=1)
    sagemaker_jobs.final_training(cfg, DATA, role=ROLE, hyperparameters={"lr": 0.01}, inst=inst,
                                  sagemaker_session=sess, wait=False)
    d = sent["CreateTrainingJob"]
    hp = {k: json.loads(v) for k, v in d["HyperParameters"].items()}
    assert hp["debugger"] is True and hp["profiler"] is True and hp["train_save_interval"] == 10
    assert "DebugRuleConfigurations" not in d and "DebugHookConfig" not in d
    assert d.get("ProfilerConfig", {}).get("DisableProfiler", True) is True
    assert {c["ChannelName"] for c in d["InputDataConfig"]} == {"train", "valid", "test"}


def test_final_training_with_the_debugger_service(aws):
    from helpers.runtime.debugger import Instrumentation
    from helpers.debugger_rules import RULES

    cfg, sess, sent = aws
    inst = Instrumentation(debugger=True, profiler=True, train_save_interval=10, eval_save_interval=1)
    sagemaker_jobs.final_training(cfg, DATA, role=ROLE, hyperparameters={"lr": 0.01}, inst=inst,
                                  use_debugger_service=True, sagemaker_session=sess, wait=False)
    d = sent["CreateTrainingJob"]
    rules = {r["RuleConfigurationName"]: r["RuleParameters"]["rule_to_invoke"] for r in d["DebugRuleConfigurations"]}
    assert sorted(rules) == sorted(r.cls for r in RULES) and all(k == v for k, v in rules.items())
    assert [r["RuleConfigurationName"] for r in d["ProfilerRuleConfigurations"]] == ["ProfilerReport"]
    hook = d["DebugHookConfig"]
    assert hook["S3OutputPath"] == "s3://sagebook-test/run/debug-output"
    colls = {c["CollectionName"]: c["CollectionParameters"] for c in hook["CollectionConfigurations"]}
    assert colls["losses"] == {"train.save_interval": "10", "eval.save_interval": "1"}
    assert colls["relu_input"]["include_regex"] == ".*relu_input"
    assert d["ProfilerConfig"]["ProfilingIntervalInMilliseconds"] == 500
