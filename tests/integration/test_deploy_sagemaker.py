"""Chapter 4's deployment with SDK v3's resources (Model, EndpointConfig, Endpoint) on the local SageMaker, and
the teardown that removes what a run created."""

import json
import tarfile

import boto3
import pytest

from helpers import deploy, serverless, session
from helpers.config import SAGEMAKER_FRAMEWORK_VERSION, RunConfig
from helpers.packaging import package_model
from helpers.serving import invoke

pytestmark = [pytest.mark.aws, pytest.mark.slow]


@pytest.fixture
def aws(local_sagemaker, monkeypatch, tmp_path):
    for k, v in local_sagemaker.environ().items():
        monkeypatch.setenv(k, v)
    boto_session = boto3.Session(region_name="us-east-1")
    cfg = RunConfig(s3_prefix="s3://sagebook-test/run", work_dir=str(tmp_path))
    return cfg, boto_session, session.execution_role(cfg, boto_session)


def deploy_like_chapter_4(boto_session, role, model_data, name, container=deploy.PYTORCH):
    """Chapter 4's calls (on the PyTorch container here: the faster start; Ray Serve has its own tests)."""
    from sagemaker.core.resources import Endpoint, EndpointConfig, Model
    from sagemaker.core.shapes import ContainerDefinition, ProductionVariant

    Model.create(model_name=name, execution_role_arn=role, session=boto_session,
                 primary_container=ContainerDefinition(image=deploy.serving_image("us-east-1", "ml.m5.large",
                                                                                 container),
                                                       model_data_url=model_data,
                                                       environment=deploy.container_environment(container, 1)))
    EndpointConfig.create(endpoint_config_name=name, session=boto_session, production_variants=[
        ProductionVariant(variant_name=deploy.VARIANT, model_name=name, initial_instance_count=1,
                          instance_type="ml.m5.large")])
    endpoint = Endpoint.create(endpoint_name=name, endpoint_config_name=name, session=boto_session)
    endpoint.wait_for_status("InService", poll=1)
    return endpoint


@pytest.fixture
def model_data(aws, trained_model, tmp_path):
    _, boto_session, _ = aws
    tar = package_model(trained_model, tmp_path / "model.tar.gz")
    boto_session.client("s3").upload_file(str(tar), "sagebook-test", "run/model/model.tar.gz")
    return "s3://sagebook-test/run/model/model.tar.gz"


def test_deploy_invoke_and_teardown(aws, model_data, synthetic_root):
    cfg, boto_session, role = aws
    name = deploy.endpoint_name(cfg)
    endpoint = deploy_like_chapter_4(boto_session, role, model_data, name)
    assert endpoint.endpoint_status == "InService"
    sm = boto_session.client("sagemaker")
    container = sm.describe_model(ModelName=name)["PrimaryContainer"]
    assert f"pytorch-inference:{SAGEMAKER_FRAMEWORK_VERSION}" in container["Image"]
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    image = next(p for p in sorted((synthetic_root / "test").rglob("*")) if p.is_file())
    answer = invoke(boto_session.client("sagemaker-runtime"), name, image.read_bytes(), "image/png")
    assert answer["predictions"][0]["top_k"]
    assert deploy.teardown(boto_session, name) == [f"endpoint {name}", f"endpoint config {name}", f"model {name}"]
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
    assert deploy.teardown(boto_session, name) == []  # a second teardown finds nothing and does not fail


def test_teardown_removes_the_model_a_failed_deploy_left(aws, model_data):
    """A deploy that failed after Model.create and before its endpoint config: the model goes too."""
    _, boto_session, role = aws
    sm = boto_session.client("sagemaker")
    sm.create_model(ModelName="sb-left-over", ExecutionRoleArn=role, PrimaryContainer={
        "Image": deploy.serving_image("us-east-1", "ml.m5.large"), "ModelDataUrl": model_data})
    assert deploy.teardown(boto_session, "sb-left-over") == ["model sb-left-over"]
    assert sm.list_models()["Models"] == []


def test_the_artifact_holds_the_handlers(aws, model_data, tmp_path):
    _, boto_session, _ = aws
    boto_session.client("s3").download_file("sagebook-test", "run/model/model.tar.gz", str(tmp_path / "m.tar.gz"))
    with tarfile.open(tmp_path / "m.tar.gz") as t:
        names = set(t.getnames())
    assert {"model.pth", "model_config.json", "code/inference.py"} <= names  # the PyTorch container's layout
    assert {"config.yaml", "deployment.py", "code/helpers/runtime/deployment.py"} <= names  # Ray Serve's


def test_endpoint_names_are_valid():
    name = deploy.endpoint_name(RunConfig(backbone="mobilenet_v3_small", dataset="https://x.org/my_data.zip"))
    assert len(name) <= 63 and all(c.isalnum() or c == "-" for c in name) and not name.startswith("-")


@pytest.mark.parametrize("recorded", [True, False])
def test_every_teardown_removes_scaling_before_the_endpoint(aws, model_data, recorded):
    cfg, boto_session, role = aws
    name = deploy.endpoint_name(cfg)
    deploy_like_chapter_4(boto_session, role, model_data, name)
    aas = boto_session.client("application-autoscaling")
    serverless.enable_autoscaling(aas, name, serverless.ScalingPolicy())
    removed = (deploy.teardown_recorded({"backend": "local", "name": name, "region": "us-east-1"}, boto_session)
               if recorded else deploy.teardown(boto_session, name))  # chapter 4's path before a redeploy
    assert removed[:3] == ["scaling policy", "scalable target", f"endpoint {name}"]
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert boto_session.client("sagemaker").list_endpoints()["Endpoints"] == []


def test_container_settings():
    assert json.loads(json.dumps(deploy.container_environment(deploy.PYTORCH, 3))) == {
        "SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "3"}
    assert deploy.container_environment(deploy.RAY_SERVE) == {  # the rest comes from the artifact's config.yaml
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"}
    with pytest.raises(ValueError, match="ray-serve, pytorch"):
        deploy.serving_image("us-east-1", "ml.m5.large", "torchserve")


def test_the_layout_table_says_which_container_reads_each_file(trained_model):
    layout = deploy.artifact_layout(trained_model)
    assert layout.loc["config.yaml", "read by"].startswith("Ray Serve")
    assert layout.loc["code/inference.py", "read by"].startswith("PyTorch")
    assert layout.loc["code/helpers/", "files"] > 10 and layout.loc["model.pth", "read by"].startswith("both")
