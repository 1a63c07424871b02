"""The model server under abuse: oversized headers, stalled clients, floods and long inference (issue 17).

One server serves the module, started with short limits so that each probe takes a second, not a minute.
"""

import io
import os
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest

from helpers.serving import LocalEndpoint

pytestmark = pytest.mark.slow

LIMITS = ["--max-header-bytes", "16384", "--header-timeout-s", "1", "--body-timeout-s", "1", "--idle-timeout-s", "1",
          "--max-concurrency", "8"]


class LimitedEndpoint(LocalEndpoint):
    def start(self, timeout_s: float = 120):
        import subprocess
        import sys
        from pathlib import Path

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "helpers.serving", "--model-dir", str(self.model_dir), "--port", str(self.port),
             "--workers", str(self.workers), *LIMITS], stdout=open(self.log_file, "ab"), stderr=subprocess.STDOUT,
            start_new_session=True, cwd=Path(__file__).resolve().parents[2])
        self.wait_healthy(timeout_s)
        return self


@pytest.fixture(scope="module")
def server(trained_model, tmp_path_factory):
    """The tiny model, made to see 224 px (its network takes any size): a 64-image request then takes seconds."""
    import json
    import shutil

    base = tmp_path_factory.mktemp("server")
    model = shutil.copytree(trained_model, base / "model")
    config = json.loads((model / "model_config.json").read_text())
    config["preprocessing"].update(image_size=224, resize_size=256)
    (model / "model_config.json").write_text(json.dumps(config))
    with LimitedEndpoint(model, log_file=base / "server.log") as ep:
        yield ep


def ping_ms(ep) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"{ep.endpoint_url}/ping", timeout=10) as r:
        assert r.status == 200
    return 1e3 * (time.perf_counter() - t0)


def raw(ep, data: bytes, wait_s: float = 5) -> bytes:
    """What the server answers to these bytes, until it closes the connection (a reset ends it too)."""
    out = b""
    with socket.create_connection((ep.host, ep.port), timeout=wait_s) as s:
        try:
            s.sendall(data)
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out


def test_ping_answers_while_a_long_inference_runs(server):
    """SageMaker and Ray health-check /ping: it must not wait behind the model."""
    batch = np.random.default_rng(0).integers(0, 255, (64, 160, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    np.save(buf, batch)
    done, took = threading.Event(), []

    def infer():
        req = urllib.request.Request(f"{server.endpoint_url}/invocations", data=buf.getvalue(),
                                     headers={"Content-Type": "application/x-npy"})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                assert r.status == 200
            took.append(time.perf_counter() - t0)
        finally:
            done.set()

    t = threading.Thread(target=infer)
    started = time.perf_counter()
    t.start()
    time.sleep(0.2)
    pings = []
    while not done.is_set() and time.perf_counter() - started < 60:
        pings.append(ping_ms(server))
        time.sleep(0.05)
    t.join(120)
    assert took and took[0] > 1.0 and len(pings) >= 3, (took, pings)  # a long inference, pings meanwhile
    assert max(pings) < 300, pings


def test_an_oversized_header_is_refused_and_the_server_goes_on(server):
    out = raw(server, b"POST /invocations HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    assert out == b"" or out.startswith(b"HTTP/1.1 400"), out[:100]  # cut off: never parsed and answered
    assert ping_ms(server) < 1000


def test_a_connection_that_sends_nothing_is_closed(server):
    started = time.monotonic()
    assert raw(server, b"", wait_s=10) == b""  # closed by the server, not by our timeout
    assert time.monotonic() - started < 5


def test_headers_that_trickle_in_are_cut_off(server):
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        started = time.monotonic()
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
        for _ in range(50):
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
            time.sleep(0.1)
            if s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                break
        assert time.monotonic() - started < 4


def test_a_stalled_upload_gets_408(server):
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
                  + b"\xff" * 100)
        out = b""
        while b"did not arrive" not in out:  # the head and the body may come in two packets
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    assert out.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in out


def ping_while_8_uploads_stall(server) -> list[bytes]:
    """The status lines of pings sent while 8 uploads hold the server's 8 slots, until one is refused or the
    uploads' 1 s body timeout frees the slots (on a busy machine the server may take a moment to see all 8)."""
    held = [socket.create_connection((server.host, server.port)) for _ in range(8)]
    answers: list[bytes] = []
    try:
        for s in held:
            s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")  # body never comes
        started = time.monotonic()
        while time.monotonic() - started < 0.8 and not (answers and answers[-1].startswith(b"HTTP/1.1 503")):
            time.sleep(0.05)
            answers.append(raw(server, b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[:12])
    finally:
        for s in held:
            s.close()
    return answers


def test_beyond_the_concurrency_limit_requests_get_503_not_a_hang(server):
    tries: list[list[bytes]] = []
    while len(tries) < 3 and not (tries and tries[-1] and tries[-1][-1] == b"HTTP/1.1 503"):
        tries.append(ping_while_8_uploads_stall(server))
    assert tries[-1] and tries[-1][-1] == b"HTTP/1.1 503", tries
    time.sleep(1.5)
    assert ping_ms(server) < 1000  # the slots come back


def test_a_flood_of_bad_requests_does_not_flood_the_log(server):
    before = server.log_file.stat().st_size
    for _ in range(200):
        raw(server, b"NOT HTTP AT ALL\r\n\r\n")
    grown = server.log_file.stat().st_size - before
    assert grown < 5_000, grown
    assert ping_ms(server) < 1000


def test_with_two_worker_processes_a_flood_does_not_flood_the_log(trained_model, tmp_path):
    """uvicorn spawns its workers: each must limit its own log (and asyncio's, which logs accept errors)."""
    with LimitedEndpoint(trained_model, log_file=tmp_path / "server.log", workers=2) as ep:
        before = ep.log_file.stat().st_size
        for _ in range(200):
            raw(ep, b"NOT HTTP AT ALL\r\n\r\n")
        grown = ep.log_file.stat().st_size - before
        assert grown < 5_000, ep.log_file.read_text()[-2000:]
        assert ping_ms(ep) < 1000


def test_memory_a_large_request_decoded_is_given_back(server):
    """Three requests that each decode a 36-megapixel image (about 150 MB while decoding): the server's memory
    afterwards stays near where it was, instead of keeping the peak."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (6000, 6000)).save(buf, format="PNG")
    before = server.rss_bytes()
    for _ in range(3):
        req = urllib.request.Request(f"{server.endpoint_url}/invocations", data=buf.getvalue(),
                                     headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(req, timeout=120) as r:
            assert r.status == 200
    grown = server.rss_bytes() - before
    assert grown < 60e6, f"{grown / 1e6:.0f} MB kept"


@pytest.mark.parametrize(("cores", "workers", "threads"), [(2, 1, "2"), (2, 2, "1"), (8, 3, "2"), (1, 4, "1")])
def test_each_worker_gets_its_share_of_the_cores(trained_model, monkeypatch, cores, workers, threads):
    """Intra-op threads = cores / workers: OpenMP threads beyond the cores fight each other and the load."""
    import uvicorn
    import uvicorn.supervisors

    from helpers import serving
    from helpers.runtime import settings

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(settings, "usable_cores", lambda: cores)
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(k["workers"]))
    monkeypatch.setattr(uvicorn.supervisors, "Multiprocess", lambda config, sockets: type(
        "M", (), {"run": lambda self: started.append(config.workers)})())
    monkeypatch.setattr(serving, "listening_socket", lambda config: None)
    for name in (serving.MODEL_DIR_ENV, serving.ENDPOINT_NAME_ENV, serving.LIMITS_ENV):
        monkeypatch.delenv(name, raising=False)
    assert serving.main(["--model-dir", str(trained_model), "--workers", str(workers)]) == 0
    assert started == [workers] and os.environ["OMP_NUM_THREADS"] == threads


def test_memory_a_request_refused_part_way_decoded_is_given_back(server):
    """40 images of 16 Mpx in one request: three are decoded before the fourth passes the request's budget and
    it is refused (413). What those three took is given back too, not only what answered requests took."""
    from helpers import bench

    body, content_type, _ = bench._bad_requests()[-1]
    before = server.rss_bytes()
    for _ in range(3):
        req = urllib.request.Request(f"{server.endpoint_url}/invocations", data=body,
                                     headers={"Content-Type": content_type})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=120)
        assert e.value.code == 413 and b"decoding budget" in e.value.read()
    grown = server.rss_bytes() - before
    assert grown < 60e6, f"{grown / 1e6:.0f} MB kept"


class FewFilesEndpoint(LimitedEndpoint):
    """The server with a soft limit of 96 open files: a flood of connections reaches it."""

    limits = LIMITS

    def start(self, timeout_s: float = 120):
        import resource
        import subprocess
        import sys
        from pathlib import Path

        def few_files():
            resource.setrlimit(resource.RLIMIT_NOFILE, (96, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "helpers.serving", "--model-dir", str(self.model_dir), "--port", str(self.port),
             *self.limits], stdout=open(self.log_file, "ab"), stderr=subprocess.STDOUT, preexec_fn=few_files,
            start_new_session=True, cwd=Path(__file__).resolve().parents[2])
        self.wait_healthy(timeout_s)
        return self


def test_at_the_open_file_limit_ping_still_answers_and_the_log_stays_small(trained_model, tmp_path):
    """300 silent connections held open against a server that may open 96 files: it closes the idle ones
    (1 s here), so a health check queued behind them is answered within seconds, while they are still held;
    and the log grows by a few lines at most."""
    with FewFilesEndpoint(trained_model, log_file=tmp_path / "server.log") as ep:
        before = ep.log_file.stat().st_size
        held = []
        try:
            for _ in range(300):
                s = socket.socket()
                s.settimeout(5)
                s.connect((ep.host, ep.port))  # the kernel's backlog takes what the server cannot accept yet
                held.append(s)
            started = time.monotonic()
            while True:
                try:
                    ping_ms(ep)
                    break
                except OSError:
                    assert time.monotonic() - started < 15, "no /ping answered while the connections were held"
            answered_s = time.monotonic() - started
        finally:
            for s in held:
                s.close()
        grown = ep.log_file.stat().st_size - before
        assert grown < 10_000, ep.log_file.read_text()[-2000:]
        assert answered_s < 15
