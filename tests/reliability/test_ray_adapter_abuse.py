"""The Ray Serve container's adapter under abuse: the same transport limits as the TorchServe-style server.

The adapter runs in a thread in front of a stub of Ray Serve's proxy (answers /-/healthz at once, and each
invocation after a pause), so each probe takes a second and no Ray starts.
"""

import http.server
import json
import socket
import threading
import time
import urllib.request

import pytest

from helpers.emulator.ray_container import AdapterLimits, adapter_server
from helpers.serving import free_port
from tests.reliability.test_server_abuse import raw

LIMITS = AdapterLimits(max_concurrency=8, max_header_bytes=16384, idle_timeout_s=1, body_timeout_s=1,
                       max_body_bytes=100_000)
INFERENCE_S = 1.5


class SlowRayServe(http.server.ThreadingHTTPServer):
    daemon_threads = True


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self.send_response(200 if self.path == "/-/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(INFERENCE_S)  # a long inference
        body = json.dumps({"predictions": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Adapter:
    def __init__(self, port: int):
        self.host, self.port = "127.0.0.1", port
        self.endpoint_url = f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def adapter():
    ray = SlowRayServe(("127.0.0.1", 0), Handler)
    threading.Thread(target=ray.serve_forever, daemon=True).start()
    port = free_port()
    server = adapter_server(f"http://127.0.0.1:{ray.server_address[1]}", port, LIMITS)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the adapter did not start"
        time.sleep(0.05)
    yield Adapter(port)
    server.should_exit = True
    thread.join(timeout=10)
    ray.shutdown()


def post(ep, body: bytes, timeout: float = 10) -> tuple[int, bytes]:
    req = urllib.request.Request(f"{ep.endpoint_url}/invocations", data=body, headers={"Content-Type": "image/jpeg"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def ping_ms(ep) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"{ep.endpoint_url}/ping", timeout=10) as r:
        assert r.status == 200
    return 1e3 * (time.perf_counter() - t0)


def test_ping_answers_while_inference_runs(adapter):
    done = threading.Thread(target=post, args=(adapter, b"x"))
    done.start()
    time.sleep(0.2)
    try:
        assert ping_ms(adapter) < 500  # not behind the 1.5 s inference
        assert done.is_alive()
    finally:
        done.join()


def test_a_body_over_the_limit_is_413_before_it_is_read(adapter):
    with socket.create_connection((adapter.host, adapter.port), timeout=10) as s:
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n")  # declared, not sent
        assert s.recv(65536).startswith(b"HTTP/1.1 413")
    status, body = post(adapter, b"\xff" * 150_000)  # chunked would not declare it: the size read is checked too
    assert status == 413 and b"the limit is 100,000" in body


def test_a_stalled_upload_gets_408(adapter):
    with socket.create_connection((adapter.host, adapter.port), timeout=10) as s:
        started = time.monotonic()
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"\xff" * 100)
        out = b""
        while b"did not arrive" not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    assert out.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 5


def test_an_oversized_header_is_refused(adapter):
    out = raw(adapter, b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    assert out == b"" or out.startswith(b"HTTP/1.1 4"), out[:100]
    assert ping_ms(adapter) < 1000


def test_an_idle_connection_is_closed(adapter):
    with socket.create_connection((adapter.host, adapter.port), timeout=10) as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(65536)
        started = time.monotonic()
        assert s.recv(65536) == b""  # kept alive, then closed by the server
        assert time.monotonic() - started < 4


def test_beyond_the_concurrency_limit_requests_get_503(adapter):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(12) as pool:  # 12 long inferences at once against a limit of 8
        statuses = [status for status, _ in pool.map(lambda _: post(adapter, b"x"), range(12))]
    assert statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
    time.sleep(0.5)
    assert ping_ms(adapter) < 1000  # the slots come back
