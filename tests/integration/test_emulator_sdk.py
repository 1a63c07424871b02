"""The SageMaker Python SDK against the local SageMaker, with only AWS_ENDPOINT_URL pointing it there."""

import json

import boto3
import pytest

pytestmark = pytest.mark.aws

SCRIPT = '''import json, os, sys
print("argv", json.dumps(sys.argv[1:]))
print("loss=0.3")
open(os.path.join(os.environ["SM_MODEL_DIR"], "model.txt"), "w").write("weights")
'''


@pytest.fixture
def sdk_env(local_sagemaker, monkeypatch):
    for k, v in local_sagemaker.environ().items():
        monkeypatch.setenv(k, v)
    s3 = local_sagemaker.client("s3")
    s3.put_object(Bucket="sagebook-test", Key="data/train/a.txt", Body=b"x")
    return local_sagemaker


def test_sdk_v2_pytorch_estimator_trains_on_the_emulator(sdk_env, tmp_path):
    """v2's PyTorch estimator (what the published solutions use): source_dir upload, fit, logs, model_data."""
    sagemaker = pytest.importorskip("sagemaker")
    if not sagemaker.__version__.startswith("2."):
        pytest.skip("the installed SDK is not v2")
    from sagemaker.pytorch import PyTorch

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(SCRIPT)
    sess = sagemaker.Session(boto_session=boto3.Session(region_name="us-east-1"), default_bucket="sagebook-test")
    est = PyTorch(entry_point="train.py", source_dir=str(tmp_path / "src"), role="arn:aws:iam::123456789012:role/R",
                  framework_version="2.6", py_version="py312", instance_type="ml.m5.large", instance_count=1,
                  hyperparameters={"lr": 0.01, "flag": True, "name": "abc"}, sagemaker_session=sess,
                  metric_definitions=[{"Name": "loss", "Regex": r"loss=([0-9.]+)"}],
                  output_path="s3://sagebook-test/out", disable_profiler=True, debugger_hook_config=False)
    est.fit({"train": "s3://sagebook-test/data/train"}, wait=True, logs="None")
    d = sdk_env.client("sagemaker").describe_training_job(TrainingJobName=est.latest_training_job.name)
    assert d["TrainingJobStatus"] == "Completed" and d["FinalMetricDataList"][0]["Value"] == 0.3
    assert est.model_data == f"s3://sagebook-test/out/{est.latest_training_job.name}/output/model.tar.gz"
    assert json.loads(d["HyperParameters"]["sagemaker_program"]) == "train.py"
    log = (sdk_env.work_dir / "emulator" / "training" / est.latest_training_job.name / "job.log").read_text()
    assert 'argv ["--flag", "True", "--lr", "0.01", "--name", "abc"]' in log  # as the framework container passes them
