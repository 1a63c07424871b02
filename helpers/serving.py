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
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from fastapi import Request  # at module level: FastAPI resolves the handlers' annotations from here

log = logging.getLogger(__name__)

MAX_PAYLOAD = 6 * 1024 * 1024  # SageMaker real-time inference payload limit
DRAIN_LIMIT = 4 * MAX_PAYLOAD  # larger bodies are not read at all
MODEL_DIR_ENV = "SAGEBOOK_MODEL_DIR"
ENDPOINT_NAME_ENV = "SAGEBOOK_ENDPOINT_NAME"
REQUIRED_FILES = ("model.pth", "model_config.json")


class EndpointError(RuntimeError):
    """The endpoint could not start or answered with an error."""


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

    body: dict[str, Any] = {"message": message}
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

    from helpers.runtime import inference

    model_dir = check_model_dir(model_dir)
    bundle = inference.model_fn(str(model_dir))
    app = FastAPI(title="sagebook local endpoint", docs_url=None, redoc_url=None, openapi_url=None)

    async def read_body(request: Request) -> bytes | None:
        """The body, or None when it is over the limit (read to the end, up to a cap, so the client
        gets the 413 instead of a reset connection; past the cap the connection is dropped)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > DRAIN_LIMIT:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= MAX_PAYLOAD:
                chunks.append(chunk)
            elif size > DRAIN_LIMIT:
                break
        return b"".join(chunks) if size <= MAX_PAYLOAD else None

    def handle(body: bytes, content_type: str, accept: str) -> str:
        data = inference.input_fn(body, content_type)
        return inference.output_fn(inference.predict_fn(data, bundle), accept)

    async def invoke(request: Request, runtime: bool) -> Any:
        body = await read_body(request)
        if body is None:
            return _error(413, f"The payload exceeds {MAX_PAYLOAD // (1024 * 1024)} MB, SageMaker's limit for "
                               "real-time inference.", "ValidationError", runtime)
        content_type = request.headers.get("content-type", "")
        accept = request.headers.get("accept", "application/json")
        try:
            # in the event loop itself: one model call at a time per worker process (others queue), and no
            # thread hop on the latency path; scale with --workers
            out = handle(body, content_type, accept)
        except inference.InferenceError as e:
            return _error(e.status_code, e.message, runtime=runtime)
        except Exception as e:  # noqa: BLE001 - a failing request must not take the server down
            log.exception("inference failed")
            return _error(500, f"Inference failed: {type(e).__name__}: {e}", runtime=runtime)
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


def app_from_env() -> Any:
    """Factory for ``uvicorn --factory`` worker processes: the model folder comes from the environment."""
    return create_app(os.environ[MODEL_DIR_ENV], os.environ.get(ENDPOINT_NAME_ENV, "sagebook"))


# --------------------------------------------------------------------------------------------------
# Clients of a model server


def free_port() -> int:
    with socket.socket() as s:
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


class LocalEndpoint:
    """``python -m helpers.serving`` as a managed background process, called through boto3."""

    def __init__(self, model_dir: str | os.PathLike[str], endpoint_name: str = "sagebook", port: int | None = None,
                 workers: int = 1, host: str = "127.0.0.1", log_file: str | os.PathLike[str] | None = None,
                 spawn: Callable[[list[str], Path, Any], Any] | None = None) -> None:
        """``spawn(argv, cwd, log)`` starts the server (``argv`` without the interpreter) and returns a
        ``Popen``-like process; by default a new interpreter in its own session."""
        self.model_dir = check_model_dir(model_dir)
        self.spawn = spawn
        self.endpoint_name = endpoint_name
        self.host, self.port, self.workers = host, port or free_port(), workers
        self.log_file = Path(log_file) if log_file else None
        self.proc: subprocess.Popen | None = None
        self._client: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 120) -> "LocalEndpoint":
        args = ["-m", "helpers.serving", "--model-dir", str(self.model_dir), "--port", str(self.port),
                "--host", self.host, "--workers", str(self.workers), "--name", self.endpoint_name]
        root = Path(__file__).resolve().parent.parent
        if self.spawn is not None:
            with open(self.log_file or os.devnull, "ab") as out:
                self.proc = self.spawn(args, root, out)
        else:
            out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
            # its own session: the endpoint outlives the notebook kernel that started it (chapter 5 calls it);
            # delete_endpoint() ends it
            self.proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, cwd=root)
        self.wait_healthy(timeout_s)
        return self

    def wait_healthy(self, timeout_s: float) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise EndpointError(f"The local endpoint exited with code {self.proc.returncode} while starting"
                                    + (f"; see {self.log_file}" if self.log_file else ""))
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/ping", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.delete_endpoint()
        raise EndpointError(f"The local endpoint did not answer /ping within {timeout_s:.0f} s")

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = runtime_client(self.endpoint_url)
        return self._client

    def predict(self, data: bytes, content_type: str = "image/jpeg") -> dict[str, Any]:
        return invoke(self.client, self.endpoint_name, data, content_type)

    def delete_endpoint(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "LocalEndpoint":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.delete_endpoint()


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helpers.serving", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True, help="a trained model folder (model.pth, model_config.json)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.add_argument("--name", default="sagebook", help="endpoint name for /endpoints/{name}/invocations")
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
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // max(1, args.workers))))  # no oversubscription
    os.environ[ENDPOINT_NAME_ENV] = args.name
    options = dict(factory=True, host=args.host, port=args.port, workers=args.workers, log_level="warning",
                   access_log=False)
    if args.workers > 1:  # uvicorn.run's multi-worker branch, with a listening socket that has TCP_NODELAY
        from uvicorn.supervisors import Multiprocess

        config = uvicorn.Config("helpers.serving:app_from_env", **options)
        Multiprocess(config, sockets=[listening_socket(config)]).run()
    else:
        uvicorn.run("helpers.serving:app_from_env", **options)
    return 0


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
