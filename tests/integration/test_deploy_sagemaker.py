"""Deploying to SageMaker with the SDK's PyTorchModel, and tearing it down, against moto."""

import tarfile

import boto3
import pytest

from helpers import deploy, sagemaker_jobs
from helpers.config import SAGEMAKER_FRAMEWORK_VERSION, RunConfig

from .conftest import ROLE

pytestmark = pytest.mark.aws


@pytest.fixture
def aws(sagemaker_env):
    yield sagemaker_env


def test_deploy_and_teardown(aws, trained_model, tmp_path):
    cfg, sess, sent = aws
    ep = deploy.deploy_sagemaker(cfg, trained_model, role=ROLE, sagemaker_session=sess, wait=False)
    calls = dict(sent)
    model = calls["CreateModel"]
    assert f"pytorch-inference:{SAGEMAKER_FRAMEWORK_VERSION}" in model["PrimaryContainer"]["Image"]
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    data = model["PrimaryContainer"]["ModelDataUrl"]
    assert data.startswith("s3://sagebook-test/") and data.endswith("model.tar.gz")
    bucket, key = data[5:].split("/", 1)
    boto3.client("s3").download_file(bucket, key, str(tmp_path / "m.tar.gz"))
    with tarfile.open(tmp_path / "m.tar.gz") as t:
        assert {"model.pth", "model_config.json", "code/inference.py"} <= set(t.getnames())
    variant = calls["CreateEndpointConfig"]["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.m5.large" and variant["InitialInstanceCount"] == 1
    assert calls["CreateEndpoint"]["EndpointName"] == ep.endpoint_name == deploy.endpoint_name(cfg)
    sm = sess.sagemaker_client
    assert sm.describe_endpoint(EndpointName=ep.endpoint_name)
    ep.delete_endpoint()
    names = [n for n, _ in sent]
    assert {"DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel"} <= set(names)
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
    assert deploy.teardown(sm, ep.endpoint_name) == []  # a second teardown finds nothing and does not fail


def test_predictor_sends_the_image_and_reads_json(aws, monkeypatch):
    cfg, sess, _ = aws
    ep = deploy.SageMakerEndpoint("ep", sess)
    seen = {}

    def fake_invoke(**kwargs):
        seen.update(kwargs)
        return {"Body": __import__("io").BytesIO(b'{"predictions": []}'), "ContentType": "application/json"}

    monkeypatch.setattr(ep.predictor.sagemaker_session.sagemaker_runtime_client, "invoke_endpoint", fake_invoke)
    assert ep.predict(b"\xff\xd8jpeg", "image/jpeg") == {"predictions": []}
    assert seen["EndpointName"] == "ep" and seen["ContentType"] == "image/jpeg" and seen["Body"] == b"\xff\xd8jpeg"


def test_endpoint_names_are_valid():
    name = deploy.endpoint_name(RunConfig(backbone="mobilenet_v3_small", dataset="https://x.org/my_data.zip"))
    assert len(name) <= 63 and all(c.isalnum() or c == "-" for c in name) and not name.startswith("-")


def test_recorded_teardown_removes_scaling_then_the_endpoint(aws, trained_model):
    from helpers import serverless

    cfg, sess, sent = aws
    ep = deploy.deploy_sagemaker(cfg, trained_model, role=ROLE, sagemaker_session=sess, wait=False)
    aas = boto3.client("application-autoscaling")
    serverless.enable_autoscaling(aas, ep.endpoint_name, serverless.ScalingPolicy())
    removed = deploy.teardown_recorded(ep.record(), sagemaker_session=sess)
    assert removed[:2] == ["scaling policy", "scalable target"] and any(r.startswith("endpoint ") for r in removed)
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert sess.sagemaker_client.list_endpoints()["Endpoints"] == []
