"""Endpoints on the local SageMaker: created, invoked through the runtime API (boto3 and the AWS CLI), deleted."""

import io
import json
import socket
import tarfile
import time

import pytest
from botocore.exceptions import ClientError

from helpers import packaging

pytestmark = pytest.mark.aws

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
BUCKET = "sagebook-test"


def put_model(s3, model_dir, tmp_path, key="models/model.tar.gz"):
    archive = packaging.package_model(model_dir, tmp_path / "model.tar.gz")
    s3.put_object(Bucket=BUCKET, Key=key, Body=archive.read_bytes())
    return f"s3://{BUCKET}/{key}"


def create_endpoint(sm, name, model_data, env=None):
    sm.create_model(ModelName=f"{name}-model", ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6-cpu-py312",
        "ModelDataUrl": model_data, "Environment": env or {}})
    sm.create_endpoint_config(EndpointConfigName=f"{name}-config", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": f"{name}-model", "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.large"}])
    return sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-config")


def wait_endpoint(sm, name, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = sm.describe_endpoint(EndpointName=name)
        if d["EndpointStatus"] != "Creating":
            return d
        time.sleep(0.3)
    raise AssertionError(f"{name} still Creating after {timeout} s")


@pytest.fixture
def endpoint(local_sagemaker, trained_model, tmp_path):
    sm = local_sagemaker.client("sagemaker")
    assert create_endpoint(sm, "ep-1", put_model(local_sagemaker.client("s3"), trained_model, tmp_path))[
        "EndpointArn"].endswith(":endpoint/ep-1")
    assert sm.describe_endpoint(EndpointName="ep-1")["EndpointStatus"] == "Creating"
    d = wait_endpoint(sm, "ep-1")
    assert d["EndpointStatus"] == "InService", d.get("FailureReason")
    return "ep-1"


def test_invoke_endpoint_answers_like_the_runtime(local_sagemaker, endpoint, test_image):
    rt = local_sagemaker.client("sagemaker-runtime")
    resp = rt.invoke_endpoint(EndpointName=endpoint, Body=test_image, ContentType="image/jpeg",
                              Accept="application/json")
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200 and resp["ContentType"] == "application/json"
    assert resp["InvokedProductionVariant"] == "AllTraffic"
    top = json.loads(resp["Body"].read())["predictions"][0]["top_k"][0]
    assert {"label", "index", "probability"} <= set(top)


def test_handler_errors_become_model_errors_with_the_original_status(local_sagemaker, endpoint):
    rt = local_sagemaker.client("sagemaker-runtime")
    with pytest.raises(ClientError) as e:
        rt.invoke_endpoint(EndpointName=endpoint, Body=b"1,2,3", ContentType="text/csv")
    err = e.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 424 and err["Error"]["Code"] == "ModelError"
    assert err["OriginalStatusCode"] == 415 and "text/csv" in err["OriginalMessage"]
    assert "/aws/sagemaker/Endpoints/ep-1" in err["LogStreamArn"]


@pytest.mark.reliability
def test_unknown_endpoint_and_oversized_body_are_validation_errors(local_sagemaker, endpoint, test_image):
    rt = local_sagemaker.client("sagemaker-runtime")
    with pytest.raises(ClientError) as e:
        rt.invoke_endpoint(EndpointName="no-such-endpoint", Body=test_image, ContentType="image/jpeg")
    assert e.value.response["Error"]["Code"] == "ValidationError"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as e:
        rt.invoke_endpoint(EndpointName=endpoint, Body=b"\0" * (6 * 1024 * 1024 + 1), ContentType="image/jpeg")
    assert e.value.response["Error"]["Code"] == "ValidationError" and "6291456" in e.value.response["Error"]["Message"]
    ok = rt.invoke_endpoint(EndpointName=endpoint, Body=test_image, ContentType="image/jpeg")  # still serving
    assert ok["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_aws_cli_invokes_the_endpoint(aws_cli, endpoint, test_image, tmp_path):
    (tmp_path / "image.jpg").write_bytes(test_image)
    out = aws_cli("sagemaker-runtime", "invoke-endpoint", "--endpoint-name", endpoint, "--content-type", "image/jpeg",
                  "--body", f"fileb://{tmp_path / 'image.jpg'}", str(tmp_path / "answer.json"))
    assert out["ContentType"] == "application/json" and out["InvokedProductionVariant"] == "AllTraffic"
    assert json.loads((tmp_path / "answer.json").read_text())["predictions"][0]["top_k"]


def test_delete_endpoint_stops_its_server(local_sagemaker, endpoint):
    sm = local_sagemaker.client("sagemaker")
    port = local_sagemaker.endpoints.hosted[("us-east-1", endpoint)].server.port
    sm.delete_endpoint(EndpointName=endpoint)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    with pytest.raises(ClientError, match="ValidationException"):
        sm.describe_endpoint(EndpointName=endpoint)


def test_a_model_that_does_not_load_fails_the_endpoint(local_sagemaker, tmp_path):
    sm, s3 = local_sagemaker.client("sagemaker"), local_sagemaker.client("s3")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("README.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    s3.put_object(Bucket=BUCKET, Key="models/empty.tar.gz", Body=buf.getvalue())
    create_endpoint(sm, "ep-bad", f"s3://{BUCKET}/models/empty.tar.gz")
    d = wait_endpoint(sm, "ep-bad")
    assert d["EndpointStatus"] == "Failed" and "model.pth" in d["FailureReason"]
    with pytest.raises(ClientError, match="ValidationError"):
        local_sagemaker.client("sagemaker-runtime").invoke_endpoint(EndpointName="ep-bad", Body=b"x",
                                                                    ContentType="image/jpeg")


def test_an_invocation_past_the_limit_times_out_as_a_model_error(local_sagemaker, monkeypatch):
    """The runtime gives a container 60 s (1 s here); then it answers ModelError, and the server goes on."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from types import SimpleNamespace

    from helpers.emulator import hosting

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            time.sleep(3)
            self.send_response(200)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(hosting, "INVOCATION_TIMEOUT_S", 1.0)
        local_sagemaker.endpoints.hosted[("us-east-1", "slow")] = hosting._Hosted(
            name="slow", region="us-east-1", endpoint=SimpleNamespace(endpoint_status="InService"),
            server=SimpleNamespace(host="127.0.0.1", port=server.server_port))
        rt = local_sagemaker.client("sagemaker-runtime")
        started = time.monotonic()
        with pytest.raises(ClientError) as e:
            rt.invoke_endpoint(EndpointName="slow", Body=b"x", ContentType="image/jpeg")
        assert time.monotonic() - started < 2.9
        err = e.value.response
        assert err["Error"]["Code"] == "ModelError" and err["ResponseMetadata"]["HTTPStatusCode"] == 424
        assert "timed out" in err["Error"]["Message"] and err["OriginalStatusCode"] == 0
    finally:
        local_sagemaker.endpoints.hosted.pop(("us-east-1", "slow"), None)
        server.shutdown()
        server.server_close()
