"""The local endpoint over loopback HTTP: boto3, the container contract, bad requests, concurrency."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient

from helpers import serving
from helpers.serving import EndpointError, LocalEndpoint


@pytest.fixture(scope="module")
def endpoint(trained_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("ep") / "endpoint.log"
    with LocalEndpoint(trained_model, endpoint_name="dogs", workers=2, log_file=log) as ep:
        yield ep


def post(url, body, content_type):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_boto3_runtime_client_against_the_local_endpoint(endpoint, test_image):
    out = endpoint.predict(test_image, "image/jpeg")
    assert out["predictions"][0]["top_k"][0]["label"] == "Afghan hound"
    raw = endpoint.client.invoke_endpoint(EndpointName="dogs", Body=test_image, ContentType="image/jpeg")
    assert raw["ContentType"] == "application/json" and raw["InvokedProductionVariant"] == "AllTraffic"


@pytest.mark.slow
def test_container_contract(endpoint, test_image):
    with urllib.request.urlopen(f"{endpoint.endpoint_url}/ping", timeout=5) as r:
        assert r.status == 200
    status, body = post(f"{endpoint.endpoint_url}/invocations", test_image, "application/x-image")
    assert status == 200 and body == endpoint.predict(test_image)


@pytest.mark.slow
@pytest.mark.parametrize("body, content_type, status", [
    (b"1,2,3", "text/csv", 415), (b"", "image/jpeg", 400), (b"not an image", "image/png", 400),
    (b"\0" * (6 * 1024 * 1024 + 1), "image/jpeg", 413),
])
def test_bad_requests_get_json_errors(endpoint, body, content_type, status):
    got, doc = post(f"{endpoint.endpoint_url}/invocations", body, content_type)
    assert got == status and doc["message"]
    with pytest.raises(ClientError) as e:
        endpoint.predict(body, content_type)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == status and e.value.response["Error"]["Message"]


@pytest.mark.slow
def test_unknown_endpoint_is_the_runtime_validation_error(endpoint, test_image):
    with pytest.raises(ClientError) as e:
        endpoint.client.invoke_endpoint(EndpointName="cats", Body=test_image, ContentType="image/jpeg")
    err = e.value.response["Error"]
    assert err["Code"] == "ValidationError" and "Endpoint cats" in err["Message"]


@pytest.mark.slow
def test_mixed_concurrent_clients(endpoint, test_image):
    expected = endpoint.predict(test_image)
    good = (test_image, "image/jpeg")
    bad = [(b"junk", "image/jpeg"), (b"x", "text/plain"), (b"", "image/png")]
    requests = [good if i % 2 == 0 else bad[i % 3] for i in range(96)]  # bounded: 96 requests

    def call(req):
        body, ct = req
        try:
            return req is good, endpoint.predict(body, ct)
        except ClientError as e:
            return req is good, e.response["ResponseMetadata"]["HTTPStatusCode"]

    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, requests, timeout=120))
    assert time.monotonic() - start < 120
    for is_good, got in results:
        if is_good:
            assert got["predictions"][0]["top_k"][0]["index"] == expected["predictions"][0]["top_k"][0]["index"]
        else:
            assert got in (400, 415)
    with urllib.request.urlopen(f"{endpoint.endpoint_url}/ping", timeout=5) as r:
        assert r.status == 200  # still up


def test_incomplete_model_dir_fails_at_start_up(tmp_path):
    (tmp_path / "model_config.json").write_text("{}")
    with pytest.raises(EndpointError, match="lacks model.pth"):
        LocalEndpoint(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "helpers.serving", "--model-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "lacks model.pth" in proc.stderr and "Traceback" not in proc.stderr


def test_app_in_process(trained_model, test_image):
    client = TestClient(serving.create_app(trained_model, "dogs"))
    assert client.get("/ping").status_code == 200
    ok = client.post("/endpoints/dogs/invocations", content=test_image, headers={"Content-Type": "image/jpeg"})
    assert ok.status_code == 200 and ok.json()["predictions"]
    bad = client.post("/endpoints/dogs/invocations", content=b"x", headers={"Content-Type": "text/csv"})
    assert bad.status_code == 415 and bad.headers["x-amzn-ErrorType"] == "ModelError"
    assert bad.json()["OriginalStatusCode"] == 415


def test_multi_worker_connections_have_nagle_off():
    """uvicorn's own multi-worker socket leaves Nagle on: two-part responses then wait ~40 ms for a delayed ACK."""
    import socket

    import uvicorn

    listener = serving.listening_socket(uvicorn.Config("helpers.serving:app_from_env", host="127.0.0.1", port=0,
                                                       workers=2))
    with listener:
        listener.listen(1)
        with socket.create_connection(listener.getsockname()[:2]) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_two_worker_endpoint_answers(trained_model, test_image):
    with LocalEndpoint(trained_model, workers=2) as ep:
        results = [ep.predict(test_image) for _ in range(4)]
    assert all(r["predictions"] for r in results)


def test_a_killed_process_has_ended_while_it_is_a_zombie():
    """An orphan stays a zombie until PID 1 reaps it (up to 1.5 s on these machines): deleting an endpoint must
    not wait for that. Here the parent is alive and never reaps, so the zombie stays."""
    import os
    import signal

    import psutil

    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\n"
                               "child = subprocess.Popen(['sleep', '60'])\n"
                               "print(child.pid, flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while child.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child.status() == psutil.STATUS_ZOMBIE
        assert serving.wait_ended([child], timeout_s=0.5) == []
        assert psutil.wait_procs([child], timeout=0.5)[1] == [child]  # what it replaces waits for the reaping
    finally:
        parent.kill()
        parent.wait()
