"""What AWS's Ray Serve container runs, on this machine: Ray Serve from the artifact's ``config.yaml``, and the adapter.

The container's entrypoint (``sagemaker_entrypoint.sh`` in aws/deep-learning-containers) puts
``/opt/ml/model`` and ``/opt/ml/model/code`` on ``PYTHONPATH``, starts a Ray head without the
dashboard, starts Serve's HTTP proxy on port 8000, runs ``serve run /opt/ml/model/config.yaml`` and
then an adapter on 8080 (``sagemaker_serve.py``): ``GET /ping`` asks Ray Serve's ``/-/healthz``, and
``POST /invocations`` is sent to the application's route ``/`` with ``Content-Type``, ``Accept`` and
every ``X-Amzn-SageMaker-*`` header; the answer's status, body, content type and
``X-Amzn-SageMaker-*`` headers come back unchanged.

Here the same happens in one process that owns its Ray instance: bound to 127.0.0.1, a fixed number of
CPUs, no dashboard, no usage reporting, its own temporary folder, and a small object store. SIGTERM
(``DeleteEndpoint``) ends Serve and Ray as stopping the container does: their processes are killed, not
shut down one by one (``ray.shutdown()`` gives each a second's grace). It is run as a script file
(``python -I``, the model folder as working directory), so the replicas import only the artifact's code,
as in the container.

The adapter holds the transport limits every server here has (:class:`AdapterLimits`): a cap on
connections and requests at once (503 beyond it), on header size, on idle connections, on a body that
does not arrive (408) and on its size (413, the runtime's 6 MB). Ray Serve's own queue is bounded by the
deployment's ``max_queued_requests`` (503 beyond it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fastapi import Request, Response  # at module level: FastAPI resolves the handlers' annotations from here

log = logging.getLogger("ray_container")

APP_START_TIMEOUT_S = 240.0


@dataclass(frozen=True)
class AdapterLimits:
    """The adapter's transport limits: what a stalled, oversized or flooding client may hold."""

    max_concurrency: int = 256  # connections and requests at once; beyond: 503
    max_header_bytes: int = 65536  # request headers; beyond: the connection is refused
    idle_timeout_s: float = 5.0  # a kept-alive connection with no request
    body_timeout_s: float = 60.0  # the whole body must arrive within this; else 408
    max_body_bytes: int = 6 * 1024 * 1024  # the runtime's limit for a real-time request; beyond: 413


OBJECT_STORE_BYTES = 100 * 1024 * 1024  # requests pass through HTTP, not the object store
BACKEND_TIMEOUT_S = 300.0  # the adapter's RAYSERVE_BACKEND_TIMEOUT default


def start_ray(model_dir: Path, ray_port: int, num_cpus: int, temp_dir: str) -> Any:
    """Ray, then Serve's proxy on ``ray_port``, then the application from ``config.yaml``; returns Serve's status."""
    import ray
    import yaml
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((model_dir / "config.yaml").read_text()))
    started = time.monotonic()
    ray.init(num_cpus=num_cpus, num_gpus=0, include_dashboard=False, namespace="serve", _temp_dir=temp_dir,
             _node_ip_address="127.0.0.1", object_store_memory=OBJECT_STORE_BYTES, configure_logging=False,
             log_to_driver=True)
    log.info("Ray started in %.1f s", time.monotonic() - started)
    serve.start(http_options={"host": "127.0.0.1", "port": ray_port})
    log.info("Serve's proxy started after %.1f s", time.monotonic() - started)
    _get_global_client().deploy_apps(config, _blocking=False)  # what `serve run config.yaml` does
    deadline = time.monotonic() + APP_START_TIMEOUT_S
    names = [app.name for app in config.applications]
    while time.monotonic() < deadline:
        apps = serve.status().applications
        states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in names}
        failed = [n for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")]
        if failed:
            raise RuntimeError(f"Ray Serve application {failed[0]!r} failed to deploy: {apps[failed[0]].message}")
        if all(s == "RUNNING" for s in states.values()):
            return serve.status()
        time.sleep(0.25)
    raise RuntimeError(f"Ray Serve applications {names} were not running after {APP_START_TIMEOUT_S:.0f} s")


def create_adapter(ray_url: str, limits: AdapterLimits = AdapterLimits()) -> Any:
    """The container's adapter: ``/ping`` and ``/invocations`` on the SageMaker port, in front of Ray Serve."""
    from contextlib import asynccontextmanager

    import httpx
    from fastapi import FastAPI

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=BACKEND_TIMEOUT_S, limits=limits) as client:
            app.state.client = client
            yield

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def sagemaker_headers(headers: Any) -> dict[str, str]:
        return {k: v for k, v in headers.items() if k.lower().startswith("x-amzn-sagemaker-")}

    def error(status: int, message: str) -> Response:
        return Response(json.dumps({"message": message}), status_code=status, media_type="application/json")

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        declared = request.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            return error(413, f"The body is {int(declared):,} bytes; the limit is {limits.max_body_bytes:,}.")
        try:
            body = await asyncio.wait_for(request.body(), limits.body_timeout_s)
        except TimeoutError:
            return error(408, f"The request body did not arrive within {limits.body_timeout_s:g} s.")
        if len(body) > limits.max_body_bytes:
            return error(413, f"The body is {len(body):,} bytes; the limit is {limits.max_body_bytes:,}.")
        accept = request.headers.get("Accept", "application/json")
        headers = {**sagemaker_headers(request.headers),
                   "Content-Type": request.headers.get("Content-Type", "application/json"), "Accept": accept}
        try:
            resp = await request.app.state.client.post(f"{ray_url}/", content=body, headers=headers)
        except httpx.TimeoutException:
            return Response(json.dumps({"error": "Request timeout"}), status_code=504, media_type="application/json")
        except httpx.ConnectError:
            return Response(json.dumps({"error": "Service unavailable"}), status_code=503,
                            media_type="application/json")
        return Response(resp.content, status_code=resp.status_code,
                        media_type=resp.headers.get("Content-Type", accept), headers=sagemaker_headers(resp.headers))

    @app.get("/ping")
    async def ping(request: Request) -> Response:
        try:
            resp = await request.app.state.client.get(f"{ray_url}/-/healthz", timeout=5.0)
        except httpx.HTTPError:
            return Response(status_code=503)
        return Response(status_code=200 if resp.status_code == 200 else 503)

    return app


def adapter_server(ray_url: str, port: int, limits: AdapterLimits = AdapterLimits()) -> Any:
    """The adapter's uvicorn server on 127.0.0.1:``port``, with ``limits`` (h11: httptools ignores the header cap)."""
    import uvicorn

    config = uvicorn.Config(create_adapter(ray_url, limits), host="127.0.0.1", port=port, log_level="warning",
                            access_log=False, http="h11", limit_concurrency=limits.max_concurrency,
                            h11_max_incomplete_event_size=limits.max_header_bytes,
                            timeout_keep_alive=limits.idle_timeout_s)
    return uvicorn.Server(config)


def claim_port(port: int) -> Any:
    """A socket bound to 127.0.0.1:``port`` and not yet listening: the port is this container's while Ray starts
    (Ray's processes bind dozens of ports), and ``/ping`` is refused, not left hanging, until the adapter serves."""
    import socket

    # IPPROTO_TCP, and Nagle off: with protocol 0 asyncio leaves Nagle on for the connections it accepts, and a
    # response written in two parts waits for the client's delayed ACK (+40 ms a keep-alive request, measured).
    # No SO_REUSEADDR: a second bind must fail.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as e:
        sock.close()
        raise RuntimeError(f"The SageMaker port {port} is taken by another program ({e.strerror})") from e
    return sock


def end_ray_processes(timeout_s: float = 5.0) -> None:
    """Kill the processes Ray started (all of this process's descendants) and wait until they have ended. A
    zombie has ended: here orphans are reaped by PID 1, which takes up to 1.5 s (measured). The rule of
    ``helpers.serving.wait_ended``, written again: the container's files import nothing of ``helpers``."""
    import psutil

    tree = psutil.Process().children(recursive=True)
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_running(p) for p in tree):
        time.sleep(0.02)


def _running(p: Any) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def watch_parent(interval_s: float = 1.0) -> None:
    """End this container (SIGTERM to itself: Ray goes down with it) when the local SageMaker that started it is gone,
    even killed with -9: no Ray instance outlives its endpoint's host."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        log.warning("the local SageMaker (pid %d) is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True, type=Path)
    p.add_argument("--port", type=int, required=True, help="the SageMaker port (8080 in the container)")
    p.add_argument("--ray-port", type=int, required=True, help="Ray Serve's HTTP proxy (8000 in the container)")
    p.add_argument("--num-cpus", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--temp-dir", required=True, help="Ray's session folder (a short path: it holds sockets)")
    for f in fields(AdapterLimits):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f"adapter limit (default: {f.default})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt  # out of start-up; uvicorn installs its own handler once it serves

    signal.signal(signal.SIGTERM, stop)
    watch_parent()
    started = time.monotonic()
    code = 1
    try:
        sock = claim_port(args.port)
        status = start_ray(args.model_dir.resolve(), args.ray_port, args.num_cpus, args.temp_dir)
        log.info("Ray Serve is running after %.1f s: %s", time.monotonic() - started,
                 {n: a.status for n, a in status.applications.items()})
        limits = AdapterLimits(**{f.name: getattr(args, f.name) for f in fields(AdapterLimits)})
        asyncio.run(adapter_server(f"http://127.0.0.1:{args.ray_port}", args.port, limits).serve(sockets=[sock]))
        code = 0
    except KeyboardInterrupt:
        code = 0 if stopping else 130
    except Exception as e:  # noqa: BLE001 - the reason goes to the log the endpoint's failure names
        log.error("%s", e)
    finally:  # the instance ends with this process, as the container does: no graceful Serve shutdown (30 s)
        import shutil

        import ray

        ray_started = ray.is_initialized()
        if ray_started:
            end_ray_processes()
        shutil.rmtree(args.temp_dir, ignore_errors=True)  # also when no one is left to remove it (parent killed)
        log.info("Ray shut down")
        if ray_started:  # now, before Ray's objects are released: their destructors wait on the killed
            logging.shutdown()  # processes (6 s measured), and so would Ray's atexit shutdown (5 s)
            os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
