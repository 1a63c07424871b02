"""A local endpoint that speaks SageMaker's protocol, and predictors for local and SageMaker endpoints.

    python -m helpers.serving --model-dir DIR [--port 8080] [--workers 1] [--name sagebook]

serves ``GET /ping`` and ``POST /invocations`` (the serving-container contract) and
``POST /endpoints/{name}/invocations`` (the ``sagemaker-runtime`` API path), so the unmodified boto3
client works against it with ``endpoint_url="http://127.0.0.1:PORT"``. The same ``inference.py``
handlers answer. It binds 127.0.0.1 unless told otherwise. Bad requests get a JSON error and never
take the server down.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
from dataclasses import asdict, dataclass, field
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations from here

from helpers.emulator import reaper

log = logging.getLogger(__name__)

MAX_PAYLOAD = 6 * 1024 * 1024  # SageMaker real-time inference payload limit
DRAIN_LIMIT = 4 * MAX_PAYLOAD  # larger bodies are not read at all
MODEL_DIR_ENV = "SAGEBOOK_MODEL_DIR"
ENDPOINT_NAME_ENV = "SAGEBOOK_ENDPOINT_NAME"
REQUIRED_FILES = ("model.pth", "model_config.json")


LIMITS_ENV = "SAGEBOOK_SERVER_LIMITS"


class EndpointError(RuntimeError):
    """The endpoint could not start or answered with an error."""


@dataclass(frozen=True)
class TransportLimits:
    """What one worker process of the model server accepts from the network before the handlers see anything."""

    max_header_bytes: int = field(default=64 * 1024, metadata={"help": "request line and headers; larger: 431"})
    header_timeout_s: float = field(default=10.0, metadata={"help": "to send the headers once started"})
    body_timeout_s: float = field(default=30.0, metadata={"help": "to send the whole body; slower: 408"})
    idle_timeout_s: float = field(default=5.0, metadata={"help": "a connection that sends nothing is closed"})
    max_concurrency: int = field(default=64, metadata={"help": "connections and requests; beyond: 503"})

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "TransportLimits":
        raw = os.environ.get(LIMITS_ENV)
        return cls(**json.loads(raw)) if raw else cls()


class RateLimitedLog(logging.Filter):
    """At most ``burst`` records per message kind every ``period_s``; then one line saying how many were dropped."""

    def __init__(self, burst: int = 5, period_s: float = 10.0) -> None:
        super().__init__()
        self.burst, self.period_s = burst, period_s
        self.seen: dict[str, list[float]] = {}  # kind -> [window start, count, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        kind = f"{record.name}:{record.levelno}:{str(record.msg)[:60]}"
        now = time.monotonic()
        start, count, dropped = self.seen.get(kind, [now, 0, 0])
        if now - start > self.period_s:
            if dropped:
                record.msg = f"{record.msg} (and {int(dropped)} more like it in the last {self.period_s:.0f} s)"
            start, count, dropped = now, 0, 0
        count += 1
        keep = count <= self.burst
        self.seen[kind] = [start, count, dropped + (0 if keep else 1)]
        return keep


def check_model_dir(model_dir: str | os.PathLike[str]) -> Path:
    """A clear error at start-up when the model folder is incomplete."""
    path = Path(model_dir)
    if not path.is_dir():
        raise EndpointError(f"Model folder {path} does not exist.")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise EndpointError(f"Model folder {path} lacks {', '.join(missing)}: point --model-dir at a trained model "
                            "(the 'model' folder of a training job, or an extracted model.tar.gz).")
    return path


# --------------------------------------------------------------------------------------------------
# The ASGI app


def _error(status: int, message: str, error_type: str | None = None, runtime: bool = False):
    from fastapi.responses import JSONResponse

    body: dict[str, Any] = {"message": message}  # what inference.error_response answers on every container
    headers = {}
    if runtime:  # the sagemaker-runtime API's error shape, which botocore turns into a ClientError code
        error_type = error_type or "ModelError"
        body = {"__type": error_type, "message": message}
        if error_type == "ModelError":
            body.update(OriginalStatusCode=status, OriginalMessage=message)
        headers["x-amzn-ErrorType"] = error_type
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(model_dir: str | os.PathLike[str], endpoint_name: str = "sagebook") -> Any:
    """The FastAPI app: loads the model once with ``model_fn`` and answers with the handlers."""
    from fastapi import FastAPI
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

    from helpers.runtime import inference

    model_dir = check_model_dir(model_dir)
    bundle = inference.model_fn(str(model_dir))
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:  # cores / workers (main sets it); also in a forked warm interpreter
        import torch

        torch.set_num_threads(int(threads))
    app = FastAPI(title="sagebook local endpoint", docs_url=None, redoc_url=None, openapi_url=None)
    limits = TransportLimits.from_env()

    async def read_body(request: Request) -> bytes | None:
        """The body, or None when it is over the limit (read to the end, up to a cap, so the client
        gets the 413 instead of a reset connection; past the cap the connection is dropped)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > DRAIN_LIMIT:
            return None
        chunks, size = [], 0

        async def drain() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size <= MAX_PAYLOAD:
                    chunks.append(chunk)
                elif size > DRAIN_LIMIT:
                    break

        await asyncio.wait_for(drain(), limits.body_timeout_s)  # a stalled upload must not hold memory and a slot
        return b"".join(chunks) if size <= MAX_PAYLOAD else None

    model_lock = asyncio.Lock()  # one model call at a time per worker process; the others queue

    def handle(body: bytes, content_type: str, accept: str) -> str:
        data, error = None, None
        try:
            data = inference.input_fn(body, content_type)
            return inference.output_fn(inference.predict_fn(data, bundle), accept)
        except inference.InferenceError as e:
            error = e
            raise
        finally:
            inference.release_memory(data, error)

    async def invoke(request: Request, runtime: bool) -> Any:
        try:
            body = await read_body(request)
        except asyncio.TimeoutError:
            return _error(408, f"The body did not arrive within {limits.body_timeout_s:g} s.", "ValidationError",
                          runtime)
        if body is None:
            return _error(413, f"The payload exceeds {MAX_PAYLOAD // (1024 * 1024)} MB, SageMaker's limit for "
                               "real-time inference.", "ValidationError", runtime)
        content_type = request.headers.get("content-type", "")
        accept = request.headers.get("accept", "application/json")
        try:
            async with model_lock:  # in a thread: /ping answers while the model runs (health checks need it)
                out = await run_in_threadpool(handle, body, content_type, accept)
        except Exception as e:  # noqa: BLE001 - a failing request must not take the server down
            if not isinstance(e, inference.InferenceError):
                log.exception("inference failed")
            return _error(*inference.failure(e), runtime=runtime)
        headers = {"x-Amzn-Invoked-Production-Variant": "AllTraffic"} if runtime else {}
        return Response(out, media_type="application/json", headers=headers)

    @app.get("/ping")
    async def ping() -> Response:
        return Response(status_code=200)

    @app.post("/invocations")
    async def invocations(request: Request) -> Any:
        return await invoke(request, runtime=False)

    @app.post("/endpoints/{name}/invocations")
    async def runtime_invocations(name: str, request: Request) -> Any:
        if name != endpoint_name:
            return _error(400, f"Endpoint {name} of account 000000000000 not found.", "ValidationError", runtime=True)
        return await invoke(request, runtime=True)

    return app


#: The loggers a flood of bad requests or connections writes to: uvicorn's, asyncio's (accept errors at the
#: file-descriptor limit) and this module's.
FLOODED_LOGGERS = ("uvicorn.error", "asyncio", __name__)


def limit_log_rate() -> None:
    """A :class:`RateLimitedLog` on each of :data:`FLOODED_LOGGERS`, once per process: uvicorn's worker processes
    are spawned, so each installs its own."""
    for name in FLOODED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitedLog) for f in logger.filters):
            logger.addFilter(RateLimitedLog())


def app_from_env() -> Any:
    """Factory for ``uvicorn --factory`` worker processes: the model folder comes from the environment."""
    limit_log_rate()
    return create_app(os.environ[MODEL_DIR_ENV], os.environ.get(ENDPOINT_NAME_ENV, "sagebook"))


# --------------------------------------------------------------------------------------------------
# Clients of a model server


RAY_WORKER_PORTS = range(10002, 20000)  # Ray's default min_worker_port..max_worker_port
_handed_out: set[int] = set()


def ephemeral_ports() -> range:
    """The kernel's ephemeral range: where binding port 0, and every outgoing connection, takes its port."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A loopback port that is free now, for a server another process binds later.

    It is picked below the ephemeral range and above Ray's worker ports: a port from the ephemeral range
    (``bind(0)``) is free only until some process binds port 0 or connects out, and Ray's start binds
    dozens of gRPC servers that way, so one of them took a model server's port before the server bound it."""
    import random

    low = RAY_WORKER_PORTS.stop
    high = min(ephemeral_ports().start, 65536)
    for port in random.Random().sample(range(low, high), max(0, min(200, high - low))):
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # below the ephemeral range is full (or there is none): the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runtime_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """A boto3 ``sagemaker-runtime`` client; with ``endpoint_url`` it talks to a local endpoint."""
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {"region_name": region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                              "config": Config(retries={"max_attempts": 1}, read_timeout=60)}
    if endpoint_url:  # a local endpoint checks no signature, but botocore needs credentials to sign with
        kwargs.update(endpoint_url=endpoint_url, aws_access_key_id="local", aws_secret_access_key="local")
    return boto3.client("sagemaker-runtime", **kwargs)


def invoke(client: Any, endpoint_name: str, data: bytes, content_type: str) -> dict[str, Any]:
    """``invoke_endpoint`` and the decoded JSON answer."""
    resp = client.invoke_endpoint(EndpointName=endpoint_name, Body=data, ContentType=content_type,
                                  Accept="application/json")
    return json.loads(resp["Body"].read())


class ModelServer:
    """A model server as a managed background process: started, health-checked on ``/ping``, called through
    boto3, and stopped with every process it started."""

    def __init__(self, model_dir: Path, endpoint_name: str, port: int | None, host: str,
                 log_file: str | os.PathLike[str] | None) -> None:
        self.model_dir = model_dir
        self.endpoint_name = endpoint_name
        self.host, self.port = host, port or free_port()
        self.log_file = Path(log_file) if log_file else None
        self.proc: Any = None
        self._client: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "ModelServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.delete_endpoint()

    def start(self, timeout_s: float = 120) -> "ModelServer":
        raise NotImplementedError

    def wait_healthy(self, timeout_s: float) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                code = self.proc.returncode
                self.delete_endpoint()
                raise EndpointError(f"The model server exited with code {code} while starting"
                                    + (f": {self.failure()}" if self.failure() else ""))
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/ping", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
            except http.client.HTTPException as e:  # an answer, but not HTTP/1.1: not this server's
                self.delete_endpoint()
                raise EndpointError(f"Port {self.port} is answered by another program, not the model server "
                                    f"({type(e).__name__}): it took the port before the server bound it") from e
        self.delete_endpoint()
        raise EndpointError(f"The model server did not answer /ping within {timeout_s:.0f} s")

    def failure(self) -> str:
        """The last error line of the server's log (what made it fail), if any."""
        if self.log_file is None or not self.log_file.is_file():
            return ""
        lines = [ln for ln in self.log_file.read_text(errors="replace").splitlines() if " ERROR " in ln]
        return lines[-1].split(": ", 1)[-1][:800] if lines else f"see {self.log_file}"

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = runtime_client(self.endpoint_url)
        return self._client

    def predict(self, data: bytes, content_type: str = "image/jpeg") -> dict[str, Any]:
        return invoke(self.client, self.endpoint_name, data, content_type)

    def processes(self) -> list[Any]:
        """The server's process and every process it started (psutil handles)."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss_bytes(self) -> int:
        """Resident memory of the whole process tree."""
        import psutil

        total = 0
        for p in self.processes():
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def delete_endpoint(self, grace_s: float = 15) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``grace_s``) and any process of its tree left behind."""
        import psutil

        tree = self.processes()[1:]
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in tree:  # only the processes this server started, by PID
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        wait_ended(tree, timeout_s=5)
        self.proc = None


def wait_ended(procs: Sequence[Any], timeout_s: float) -> list[Any]:
    """Wait until each ``psutil.Process`` has ended, and return those still running. A zombie has ended: an
    orphan stays one until PID 1 reaps it, which takes up to 1.5 s on this machine (``psutil.wait_procs``
    waits for that)."""
    import psutil

    def running(p: Any) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout_s
    while (alive := [p for p in procs if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return alive


class LocalEndpoint(ModelServer):
    """What the PyTorch inference container runs for ``inference.py``: ``python -m helpers.serving``."""

    def __init__(self, model_dir: str | os.PathLike[str], endpoint_name: str = "sagebook", port: int | None = None,
                 workers: int = 1, host: str = "127.0.0.1", log_file: str | os.PathLike[str] | None = None,
                 spawn: Callable[[list[str], Path, Any], Any] | None = None) -> None:
        """``spawn(argv, cwd, log)`` starts the server (``argv`` without the interpreter) and returns a
        ``Popen``-like process; by default a new interpreter in its own session."""
        super().__init__(check_model_dir(model_dir), endpoint_name, port, host, log_file)
        self.spawn = spawn
        self.workers = workers

    def start(self, timeout_s: float = 120) -> "LocalEndpoint":
        args = ["-m", "helpers.serving", "--model-dir", str(self.model_dir), "--port", str(self.port),
                "--host", self.host, "--workers", str(self.workers), "--name", self.endpoint_name]
        root = Path(__file__).resolve().parent.parent
        if self.spawn is not None:
            with open(self.log_file or os.devnull, "ab") as out:
                self.proc = reaper.adopt(self.spawn(args, root, out))
        else:
            out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
            # its own session: the endpoint outlives the notebook kernel that started it (chapter 5 calls it);
            # delete_endpoint() ends it
            self.proc = reaper.adopt(subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                                                      start_new_session=True, cwd=root))
        self.wait_healthy(timeout_s)
        return self

RAY_CONTAINER = Path(__file__).resolve().parent / "emulator" / "ray_container.py"
RAY_START_TIMEOUT_S = 300.0


class RayServeEndpoint(ModelServer):
    """What AWS's Ray Serve container runs for an extracted artifact (:mod:`helpers.emulator.ray_container`):
    Ray Serve from the artifact's ``config.yaml`` behind a ``/ping`` and ``/invocations`` adapter."""

    def __init__(self, model_dir: str | os.PathLike[str], endpoint_name: str = "sagebook", port: int | None = None,
                 log_file: str | os.PathLike[str] | None = None, environment: dict[str, str] | None = None,
                 num_cpus: int | None = None) -> None:
        path = Path(model_dir).resolve()
        self.environment = dict(environment or {})
        if not (path / "config.yaml").is_file() and not self.environment.get("SM_RAYSERVE_APP"):
            raise EndpointError(f"No Ray Serve application in {path}: the artifact needs config.yaml at its root "
                                "(or the model's environment SM_RAYSERVE_APP=module:app), as AWS's Ray Serve "
                                "container requires.")
        super().__init__(path, endpoint_name, port, "127.0.0.1", log_file)
        from helpers.runtime.settings import usable_cores

        self.num_cpus = num_cpus or usable_cores()
        self.temp_dir: str | None = None

    def start(self, timeout_s: float = RAY_START_TIMEOUT_S) -> "RayServeEndpoint":
        import shutil
        import tempfile

        app = self.model_dir.parent / "app" / "sagemaker_serve.py"  # the container's adapter lives outside the model
        app.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RAY_CONTAINER, app)
        self.temp_dir = tempfile.mkdtemp(prefix="sbray-", dir="/tmp")  # short: Ray puts sockets there
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")}
        env.update(self.environment, PYTHONPATH=f"{self.model_dir}:{self.model_dir / 'code'}",
                   RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = reaper.adopt(subprocess.Popen(
            [sys.executable, "-I", str(app), "--model-dir", ".", "--port", str(self.port),
             "--ray-port", str(free_port()), "--temp-dir", self.temp_dir, "--num-cpus", str(self.num_cpus)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.model_dir, env=env))
        self.wait_healthy(timeout_s)
        return self

    def delete_endpoint(self, grace_s: float = 30) -> None:
        import shutil

        super().delete_endpoint(grace_s)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helpers.serving", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True, help="a trained model folder (model.pth, model_config.json)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--name", default="sagebook", help="endpoint name for /endpoints/{name}/invocations")
    from helpers.runtime.settings import add_dataclass_flags

    add_dataclass_flags(p.add_argument_group("transport limits, per worker process"), TransportLimits)
    return p


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model_dir = check_model_dir(args.model_dir).resolve()
    except EndpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.environ[MODEL_DIR_ENV] = str(model_dir)
    from helpers.runtime.settings import usable_cores

    cores = usable_cores()
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // max(1, args.workers))))  # no oversubscription
    os.environ[ENDPOINT_NAME_ENV] = args.name
    limits = TransportLimits(**{f: getattr(args, f) for f in TransportLimits.__dataclass_fields__})
    os.environ[LIMITS_ENV] = limits.to_json()  # the worker processes read them from there
    limit_log_rate()  # a flood of bad requests must not flood the log; each worker process does it too
    options = dict(factory=True, host=args.host, port=args.port, workers=args.workers, log_level="warning",
                   access_log=False, http="helpers.serving:GuardedH11Protocol",
                   h11_max_incomplete_event_size=limits.max_header_bytes, limit_concurrency=limits.max_concurrency,
                   timeout_keep_alive=limits.idle_timeout_s)
    if args.workers > 1:  # uvicorn.run's multi-worker branch, with a listening socket that has TCP_NODELAY
        from uvicorn.supervisors import Multiprocess

        config = uvicorn.Config("helpers.serving:app_from_env", **options)
        Multiprocess(config, sockets=[listening_socket(config)]).run()
    else:
        uvicorn.run("helpers.serving:app_from_env", **options)
    return 0


def _guarded_h11() -> type:
    """uvicorn's h11 protocol, with the deadlines it lacks: a new connection that sends nothing, and request
    headers that trickle in, are closed (uvicorn times out only idle keep-alive connections)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    limits = TransportLimits.from_env()  # once per worker process, not per connection

    class Guarded(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.header_deadline = None
            self.timeout_keep_alive_task = self.loop.call_later(limits.idle_timeout_s, self.timeout_keep_alive_handler)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            waiting = self.conn.their_state == h11.IDLE and not self.transport.is_closing()
            if waiting and self.header_deadline is None:
                self.header_deadline = self.loop.call_later(limits.header_timeout_s, self.transport.close)
            elif not waiting and self.header_deadline is not None:
                self.header_deadline.cancel()
                self.header_deadline = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self.header_deadline is not None:
                self.header_deadline.cancel()
            super().connection_lost(exc)

    return Guarded


def __getattr__(name: str) -> Any:
    if name == "GuardedH11Protocol":  # built on first use: importing this module needs no uvicorn
        return _guarded_h11()
    raise AttributeError(name)


def listening_socket(config: Any) -> socket.socket:
    """uvicorn's socket for its worker processes, with Nagle's algorithm off.

    uvicorn creates it with protocol 0, so asyncio never sets TCP_NODELAY on the connections it
    accepts; a response written in two parts (headers, body) then waits for the client's delayed ACK,
    about 40 ms. Linux copies the option from the listening socket to each accepted one.
    """
    sock = config.bind_socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


if __name__ == "__main__":
    sys.exit(main())
