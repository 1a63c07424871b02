"""Ray Serve endpoints on the local SageMaker: real Ray Serve from the artifact's config.yaml, as AWS's container
runs it.

One endpoint serves the whole module (Ray takes ~25 s to start on 2 cores); the last test deletes it.
"""

import json
import time

import psutil
import pytest
from botocore.exceptions import ClientError

from helpers import bench, deploy
from helpers.emulator.hosting import container_kind
from helpers.serving import EndpointError, RayServeEndpoint
from tests.integration.test_emulator_hosting import BUCKET, ROLE, put_model, wait_endpoint

pytestmark = [pytest.mark.aws, pytest.mark.slow]

NAME = "ray-ep"


def create_endpoint(sm, name, model_data, container):
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": deploy.serving_image("eu-west-1", "ml.m5.large", container), "ModelDataUrl": model_data,
        "Environment": deploy.container_environment(container)})
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)


@pytest.fixture(scope="module")
def local_sagemaker(tmp_path_factory):
    from helpers.emulator import LocalSageMaker

    with LocalSageMaker(tmp_path_factory.mktemp("ray") / "work", stop_grace_s=2) as sm:
        sm.client("s3").create_bucket(Bucket=BUCKET)
        yield sm


@pytest.fixture(scope="module")
def ray_endpoint(local_sagemaker, trained_model, tmp_path_factory):
    """The artifact of a training job, deployed on the Ray Serve image, and its server (to measure)."""
    sm = local_sagemaker.client("sagemaker")
    model_data = put_model(local_sagemaker.client("s3"), trained_model, tmp_path_factory.mktemp("artifact"))
    started = time.monotonic()
    create_endpoint(sm, NAME, model_data, deploy.RAY_SERVE)
    d = wait_endpoint(sm, NAME, timeout=300)
    assert d["EndpointStatus"] == "InService", d.get("FailureReason")
    server = local_sagemaker.endpoints.hosted[("us-east-1", NAME)].server
    assert isinstance(server, RayServeEndpoint)
    print(f"Ray Serve endpoint InService after {time.monotonic() - started:.1f} s; "
          f"process tree {len(server.processes())} processes, RSS {server.rss_bytes() / 2**20:.0f} MiB")
    return server


def test_image_uris_pick_the_container_in_any_region():
    for region in ("us-east-1", "eu-west-1", "ap-southeast-2"):
        assert container_kind(deploy.serving_image(region, "ml.m5.large", deploy.RAY_SERVE)) == deploy.RAY_SERVE
        assert container_kind(deploy.serving_image(region, "ml.g5.xlarge", deploy.RAY_SERVE)) == deploy.RAY_SERVE
        assert container_kind(deploy.serving_image(region, "ml.m5.large", deploy.PYTORCH)) == deploy.PYTORCH
    assert container_kind("public.ecr.aws/deep-learning-containers/ray:serve-ml-sagemaker-cuda") == deploy.RAY_SERVE
    for other in ("763104351884.dkr.ecr.us-east-1.amazonaws.com/ray:serve-ml-cpu-v1",  # the EC2 image
                  "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6-cpu-py312", ""):
        with pytest.raises(EndpointError, match="serves AWS's Ray Serve image"):
            container_kind(other)


def test_boto3_and_the_aws_cli_reach_ray_serve(local_sagemaker, ray_endpoint, aws_cli, test_image, tmp_path):
    rt = local_sagemaker.client("sagemaker-runtime")
    resp = rt.invoke_endpoint(EndpointName=NAME, Body=test_image, ContentType="image/jpeg", Accept="application/json")
    assert resp["ContentType"] == "application/json" and resp["InvokedProductionVariant"] == "AllTraffic"
    assert json.loads(resp["Body"].read())["predictions"][0]["top_k"][0]["label"]
    assert resp["CustomAttributes"].startswith("replica=") and ";batch=" in resp["CustomAttributes"]
    (tmp_path / "image.jpg").write_bytes(test_image)
    out = aws_cli("sagemaker-runtime", "invoke-endpoint", "--endpoint-name", NAME, "--content-type", "image/jpeg",
                  "--body", f"fileb://{tmp_path / 'image.jpg'}", str(tmp_path / "answer.json"))
    assert out["ContentType"] == "application/json"
    assert json.loads((tmp_path / "answer.json").read_text())["predictions"][0]["top_k"]


def test_the_sdk_reaches_ray_serve(local_sagemaker, ray_endpoint, test_image, monkeypatch):
    """SDK v3's Endpoint resource (what ModelBuilder.deploy returns; v2's Predictor) invokes it."""
    import boto3
    from sagemaker.core.resources import Endpoint

    for k, v in local_sagemaker.environ().items():
        monkeypatch.setenv(k, v)
    endpoint = Endpoint.get(endpoint_name=NAME, session=boto3.Session(region_name="us-east-1"))
    assert endpoint.endpoint_status == "InService"
    resp = endpoint.invoke(body=test_image, content_type="image/jpeg", accept="application/json")
    assert json.loads(resp.body.read())["predictions"][0]["top_k"]


def test_concurrent_requests_are_batched(local_sagemaker, ray_endpoint, test_image):
    from concurrent.futures import ThreadPoolExecutor

    rt = local_sagemaker.client("sagemaker-runtime")

    def call(_):
        return rt.invoke_endpoint(EndpointName=NAME, Body=test_image, ContentType="image/jpeg")["CustomAttributes"]

    with ThreadPoolExecutor(8) as pool:
        attrs = list(pool.map(call, range(48)))
    batches = [int(a.split("batch=")[1]) for a in attrs]
    assert max(batches) > 1, batches


@pytest.mark.parametrize("kind", [deploy.RAY_SERVE, deploy.PYTORCH])
def test_bad_requests_get_the_same_answers_on_both_containers(local_sagemaker, ray_endpoint, kind, request):
    """The same bad-input set through the runtime API: 424 ModelError with the same original status and message."""
    rt = local_sagemaker.client("sagemaker-runtime")
    if kind == deploy.PYTORCH:
        sm = local_sagemaker.client("sagemaker")
        model_data = sm.describe_model(ModelName=NAME)["PrimaryContainer"]["ModelDataUrl"]
        create_endpoint(sm, "torch-ep", model_data, deploy.PYTORCH)
        assert wait_endpoint(sm, "torch-ep")["EndpointStatus"] == "InService"
        request.addfinalizer(lambda: sm.delete_endpoint(EndpointName="torch-ep"))
    answers = {}
    for label, body, content_type, accept in BAD_REQUESTS:
        with pytest.raises(ClientError) as e:
            rt.invoke_endpoint(EndpointName=NAME if kind == deploy.RAY_SERVE else "torch-ep", Body=body,
                               ContentType=content_type, Accept=accept)
        err = e.value.response
        assert err["Error"]["Code"] == "ModelError" and err["ResponseMetadata"]["HTTPStatusCode"] == 424, label
        answers[label] = (err["OriginalStatusCode"], json.loads(err["OriginalMessage"]))
    EXPECTED.setdefault("answers", answers)
    assert answers == EXPECTED["answers"]  # the second container answers exactly as the first
    assert {label: status for label, (status, _) in answers.items()} == {
        "content type": 415, "not an image": 400, "bad json": 400, "accept": 406, "too many pixels": 413,
        "nested json": 400, "empty array": 400, "an empty image": 400, "over the request's budget": 413}


def _big_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (7000, 7000)).save(buf, format="PNG")
    return buf.getvalue()


BAD_REQUESTS = [("content type", b"1,2,3", "text/csv", "application/json"),
                ("not an image", b"definitely not a JPEG", "image/jpeg", "application/json"),
                ("bad json", b"{", "application/json", "application/json"),
                ("accept", None, "image/jpeg", "text/csv"),
                ("too many pixels", _big_png(), "image/png", "application/json"),
                *[(label, body, content_type, "application/json") for label, (body, content_type, _) in zip(
                    ("nested json", "empty array", "an empty image", "over the request's budget"),
                    [r for i, r in enumerate(bench._bad_requests()) if i in (3, 4, 5, 7)])]]
EXPECTED: dict = {}


@pytest.fixture(autouse=True)
def _fill_accept_case(test_image):
    BAD_REQUESTS[3] = ("accept", test_image, "image/jpeg", "text/csv")


def test_a_replica_gives_back_the_memory_a_large_request_decoded(local_sagemaker, ray_endpoint):
    """Three requests that each decode a 36-megapixel image (about 150 MB while decoding): the replica that
    served them keeps near what it had, as the TorchServe-style server does (``inference.release_memory``)."""
    import io

    from PIL import Image

    def replicas():
        return {p.pid: p.memory_info().rss for p in ray_endpoint.processes()
                if "ServeReplica" in " ".join(p.cmdline())}

    buf = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buf, format="PNG")
    rt = local_sagemaker.client("sagemaker-runtime")
    before = replicas()
    assert before, "no Ray Serve replica process found"
    for _ in range(3):
        rt.invoke_endpoint(EndpointName=NAME, Body=buf.getvalue(), ContentType="image/png")["Body"].read()
    after = replicas()
    grown = {pid: after[pid] - rss for pid, rss in before.items() if pid in after}
    assert grown and max(grown.values()) < 60e6, {pid: f"{g / 1e6:.0f} MB" for pid, g in grown.items()}


def test_delete_endpoint_ends_ray_and_every_process_it_started(local_sagemaker, ray_endpoint):
    tree = ray_endpoint.processes()
    assert len(tree) > 3  # the adapter, Ray's GCS and raylet, Serve's controller, proxy and replica
    started = time.monotonic()
    local_sagemaker.client("sagemaker").delete_endpoint(EndpointName=NAME)
    print(f"Ray Serve endpoint deleted in {time.monotonic() - started:.1f} s")
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert alive == []
    assert ray_endpoint.temp_dir is None
