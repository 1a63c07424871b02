"""Ports for servers that another process binds later: nothing else may take them in between.

CI once saw a Ray Serve endpoint fail its health check with an HTTP/2 frame for an answer: one of the gRPC
servers Ray starts (they bind port 0) had taken the adapter's port, picked from the ephemeral range, before
the adapter bound it.
"""

import signal
import socket
import threading

import pytest

from helpers import serving
from helpers.emulator import ray_container
from helpers.serving import EndpointError, ModelServer

HTTP2_SETTINGS = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x05\x00\x00@\x00"  # what a gRPC server sends first


def test_free_ports_are_outside_the_ephemeral_range_and_ray_worker_ports():
    ports = [serving.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports), "a port was handed out twice"
    for port in ports:
        assert port not in serving.ephemeral_ports() and port not in serving.RAY_WORKER_PORTS, port
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free


def test_a_port_answered_by_another_program_is_a_clear_error(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_http2() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(HTTP2_SETTINGS)

    threading.Thread(target=answer_http2, daemon=True).start()
    server = ModelServer(tmp_path, "ep", listener.getsockname()[1], "127.0.0.1", None)
    with listener, pytest.raises(EndpointError, match="answered by another program"):
        server.wait_healthy(10)


@pytest.fixture
def container_signals():
    """ray_container.main installs its own SIGTERM handler: give pytest its own back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def container_args(tmp_path, port):
    return ["--model-dir", str(tmp_path), "--port", str(port), "--ray-port", str(serving.free_port()),
            "--temp-dir", str(tmp_path / "ray"), "--num-cpus", "1"]


def test_the_container_holds_its_port_while_ray_starts(tmp_path, monkeypatch, container_signals):
    port = serving.free_port()
    seen = {}

    def start_ray(model_dir, ray_port, num_cpus, temp_dir):
        with socket.socket() as s:  # what any of Ray's processes would try
            try:
                s.bind(("127.0.0.1", port))
                seen["taken"] = False
            except OSError:
                seen["taken"] = True
        with socket.socket() as probe:
            seen["refused"] = probe.connect_ex(("127.0.0.1", port)) != 0  # /ping is refused, not left waiting
        raise RuntimeError("stop after the check")

    monkeypatch.setattr(ray_container, "start_ray", start_ray)
    assert ray_container.main(container_args(tmp_path, port)) == 1
    assert seen == {"taken": True, "refused": True}


def test_a_taken_port_stops_the_container_before_ray_starts(tmp_path, monkeypatch, container_signals, caplog):
    monkeypatch.setattr(ray_container, "start_ray", lambda *a: pytest.fail("Ray started on a taken port"))
    port = serving.free_port()
    with socket.create_server(("127.0.0.1", port)):
        assert ray_container.main(container_args(tmp_path, port)) == 1
    assert f"port {port} is taken" in caplog.text


def test_the_containers_port_has_nagle_off_for_every_connection():
    """A socket of protocol 0 makes asyncio leave Nagle on: keep-alive requests to the adapter took 68 ms, not 27."""
    sock = ray_container.claim_port(serving.free_port())
    with sock:
        sock.listen(1)
        with socket.create_connection(sock.getsockname()[:2]):
            accepted, _ = sock.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
