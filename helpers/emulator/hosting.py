"""Endpoints on the local SageMaker: a model server per endpoint, and ``InvokeEndpoint`` with the runtime's semantics.

- ``CreateEndpoint`` answers at once with the endpoint ``Creating``; the model artifact
  (``ModelDataUrl``: a ``model.tar.gz`` in the local S3, or a ``file://`` path) is extracted and the
  model server of the model's image started, in any region:

  - AWS's Ray Serve container (repository ``ray``, a ``serve-ml-sagemaker`` tag): real Ray Serve from the
    artifact's ``config.yaml`` behind the container's ``/ping`` and ``/invocations`` adapter
    (:class:`helpers.serving.RayServeEndpoint`); the model's environment reaches it;
  - the PyTorch inference container (repository ``pytorch-inference``): ``code/inference.py`` served as
    TorchServe would (:class:`helpers.serving.LocalEndpoint`); ``SAGEMAKER_MODEL_SERVER_WORKERS`` in the
    model's environment sets its worker processes;
  - any other image fails the endpoint, with the reason.

  The endpoint is ``InService`` once the server answers ``/ping``, or ``Failed`` with the reason.
- ``InvokeEndpoint`` (``POST /endpoints/NAME/invocations``, signed for ``sagemaker``) reaches the server as
  the runtime does: a handler's 4xx/5xx becomes HTTP 424 ``ModelError`` with ``OriginalStatusCode`` and
  ``OriginalMessage``; an unknown or not-in-service endpoint is a ``ValidationError``; a body over
  6 MB (6,291,456 bytes) is refused; an invocation past 60 s times out.
- ``DeleteEndpoint`` stops the server; so does leaving the emulator.
"""

from __future__ import annotations

import http.client
import os
import logging
import re
import shutil
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote

from helpers.deploy import PYTORCH, RAY_SERVE
from helpers.emulator import storage
from helpers.emulator.server import ACCOUNT_ID, AwsError, Request, Route, validation_error
from helpers.emulator.training import now

log = logging.getLogger(__name__)

MAX_PAYLOAD = 6 * 1024 * 1024  # 6,291,456 bytes: the runtime's limit for a real-time request
INVOCATION_TIMEOUT_S = 60.0
START_TIMEOUT_S = 300.0
FORWARDED = ("Content-Type", "Accept", "X-Amzn-Sagemaker-Custom-Attributes")  # headers the container receives


@dataclass
class _Hosted:
    name: str
    region: str
    endpoint: Any  # moto's FakeEndpoint: what Describe/List report
    server: Any = None  # helpers.serving.LocalEndpoint
    variant: str = "AllTraffic"
    thread: threading.Thread | None = None


class InvocationError(AwsError):  # noqa: N818 - named as the runtime's errors are
    """An InvokeEndpoint error, with the fields the runtime's model gives it."""

    def __init__(self, code: str, message: str, status: int, **fields: Any) -> None:
        super().__init__(code, message, status)
        self.fields = fields


class Endpoints:
    """CreateEndpoint and DeleteEndpoint executed, and the runtime's InvokeEndpoint; moto keeps the rest."""

    def __init__(self, root: Path, warm: Callable[[], Any] | None = None) -> None:
        """``warm()``: the warm interpreter model servers fork from (:mod:`helpers.emulator.warm`), if any."""
        self.root = Path(root)
        self.warm = warm
        self.hosted: dict[tuple[str, str], _Hosted] = {}
        self._lock = threading.Lock()

    def handlers(self) -> dict[str, Callable[[dict[str, Any], str], dict[str, Any]]]:
        return {"CreateEndpoint": self.create, "DeleteEndpoint": self.delete}

    @staticmethod
    def backend(region: str) -> Any:
        from moto.sagemaker.models import sagemaker_backends

        return sagemaker_backends[ACCOUNT_ID][region]

    # -- control plane ---------------------------------------------------------------------------
    def create(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        backend = self.backend(region)
        name, config_name = params["EndpointName"], params["EndpointConfigName"]
        with self._lock:
            if name in backend.endpoints:
                raise validation_error(f'Cannot create already existing endpoint "arn:aws:sagemaker:{region}:'
                                       f'{ACCOUNT_ID}:endpoint/{name}".')
            if config_name not in backend.endpoint_configs:
                raise validation_error(f'Could not find endpoint configuration "arn:aws:sagemaker:{region}:'
                                       f'{ACCOUNT_ID}:endpoint-config/{config_name}".')
            endpoint = backend.create_endpoint(endpoint_name=name, endpoint_config_name=config_name,
                                               tags=params.get("Tags"))
            endpoint.endpoint_status, endpoint.failure_reason = "Creating", None
            endpoint.creation_time = endpoint.last_modified_time = now()
            variants = backend.endpoint_configs[config_name].production_variants
            hosted = _Hosted(name=name, region=region, endpoint=endpoint,
                             variant=variants[0]["VariantName"] if variants else "AllTraffic")
            self.hosted[(region, name)] = hosted
        hosted.thread = threading.Thread(target=self._start, args=(hosted, config_name), name=f"endpoint-{name}",
                                         daemon=True)
        hosted.thread.start()
        return {"EndpointArn": endpoint.arn}

    def delete(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        name = params["EndpointName"]
        backend = self.backend(region)
        if name not in backend.endpoints:
            raise validation_error(f'Could not find endpoint "arn:aws:sagemaker:{region}:{ACCOUNT_ID}:endpoint/{name}".')
        hosted = self.hosted.pop((region, name), None)
        if hosted is not None:
            if hosted.thread is not None:
                hosted.thread.join(timeout=START_TIMEOUT_S)
            if hosted.server is not None:
                hosted.server.delete_endpoint()
        backend.delete_endpoint(name)
        return {}

    def shutdown(self) -> None:
        """Stop every model server (the endpoints stay recorded until the emulator goes)."""
        for key in list(self.hosted):
            hosted = self.hosted.pop(key)
            if hosted.thread is not None:
                hosted.thread.join(timeout=START_TIMEOUT_S)
            if hosted.server is not None:
                hosted.server.delete_endpoint()

    def _spawn(self) -> Callable[[list[str], Path, Any], Any] | None:
        """Start model servers from the warm interpreter (torch imported once), as the container has it installed."""
        zygote = self.warm() if self.warm is not None else None
        if zygote is None or not zygote.available():
            return None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON"))}
        return lambda argv, cwd, out: zygote.spawn(argv, cwd, env, output=out)

    def _start(self, hosted: _Hosted, config_name: str) -> None:
        from helpers.serving import EndpointError, LocalEndpoint, RayServeEndpoint

        backend = self.backend(hosted.region)
        folder = self.root / hosted.name
        try:
            variants = backend.endpoint_configs[config_name].production_variants
            if len(variants) != 1:
                raise EndpointError("the local SageMaker hosts endpoint configurations with one production variant")
            model = backend._models.get(variants[0]["ModelName"])  # moto keeps models there
            if model is None:
                raise EndpointError(f"Could not find model {variants[0]['ModelName']!r}.")
            container = model.primary_container or (model.containers or [{}])[0]
            kind = container_kind(container.get("Image") or "")
            data_url = container.get("ModelDataUrl")
            if not data_url:
                raise EndpointError("the model has no ModelDataUrl (a model.tar.gz)")
            if folder.exists():
                shutil.rmtree(folder)
            model_dir = folder / "model"
            model_dir.mkdir(parents=True)
            _fetch_model(data_url, folder)
            env = container.get("Environment") or {}
            if kind == RAY_SERVE:
                server = RayServeEndpoint(model_dir, hosted.name, log_file=folder / "server.log", environment=env)
            else:
                workers = int(env.get("SAGEMAKER_MODEL_SERVER_WORKERS") or 1)
                server = LocalEndpoint(model_dir, hosted.name, workers=workers, log_file=folder / "server.log",
                                       spawn=self._spawn())
            hosted.server = server
            server.start(timeout_s=START_TIMEOUT_S)
            hosted.endpoint.endpoint_status = "InService"
        except Exception as e:  # noqa: BLE001 - any failure fails the endpoint, with its reason
            if not isinstance(e, (EndpointError, AwsError, OSError, tarfile.TarError)):
                log.exception("endpoint %s", hosted.name)
            message = e.message if isinstance(e, AwsError) else str(e)
            hosted.endpoint.failure_reason = f"The primary container for production variant {hosted.variant} did " \
                                             f"not pass the ping health check: {message}"[:1024]
            hosted.endpoint.endpoint_status = "Failed"
            if hosted.server is not None:
                hosted.server.delete_endpoint()
                hosted.server = None
        finally:
            hosted.endpoint.last_modified_time = now()

    # -- runtime ---------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [Route("sagemaker", "POST", re.compile(r"^/endpoints/([^/]+)/invocations$"), self._invoke_route)]

    def _invoke_route(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        headers = {h: request.headers[h] for h in FORWARDED if h in request.headers}
        return self.invoke(unquote(request.match.group(1)), request.region, request.body, headers)

    def invoke(self, name: str, region: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """What the runtime answers to ``InvokeEndpoint``; raises :class:`InvocationError` as the runtime errs."""
        hosted = self.hosted.get((region, name))
        if hosted is None or hosted.endpoint.endpoint_status != "InService" or hosted.server is None:
            raise InvocationError("ValidationError", f"Endpoint {name} of account {ACCOUNT_ID} not found.", 400)
        if len(body) > MAX_PAYLOAD:
            raise InvocationError("ValidationError", f"Request payload of {len(body)} bytes exceeds the maximum of "
                                f"{MAX_PAYLOAD} bytes for a real-time endpoint.", 400)
        log_stream = f"arn:aws:logs:{region}:{ACCOUNT_ID}:log-group:/aws/sagemaker/Endpoints/{name}"
        conn = http.client.HTTPConnection(hosted.server.host, hosted.server.port, timeout=INVOCATION_TIMEOUT_S)
        try:
            conn.request("POST", "/invocations", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except TimeoutError:
            raise InvocationError("ModelError", "Received server error (0) from primary with message \"Your invocation "
                                "timed out while waiting for a response from container primary. Review the latency "
                                "metrics for each container in Amazon CloudWatch, resolve the issue, and try again.\"",
                                424, OriginalStatusCode=0, LogStreamArn=log_stream) from None
        except OSError as e:
            raise InvocationError("ModelError", f"Received server error (0) from primary with message \"{e}\"", 424,
                                OriginalStatusCode=0, LogStreamArn=log_stream) from None
        finally:
            conn.close()
        if resp.status >= 400:
            text = data.decode("utf-8", errors="replace")
            kind = "client" if resp.status < 500 else "server"
            raise InvocationError("ModelError", f"Received {kind} error ({resp.status}) from primary with message "
                                f"\"{text}\". See {log_stream} in account {ACCOUNT_ID} for more information.", 424,
                                OriginalStatusCode=resp.status, OriginalMessage=text, LogStreamArn=log_stream)
        out = {"Content-Type": resp.getheader("Content-Type") or "application/json",
               "x-Amzn-Invoked-Production-Variant": hosted.variant}
        if resp.getheader("X-Amzn-SageMaker-Custom-Attributes"):
            out["X-Amzn-SageMaker-Custom-Attributes"] = resp.getheader("X-Amzn-SageMaker-Custom-Attributes")
        return 200, out, data


def container_kind(image: str) -> str:
    """Which serving container an image URI names: :data:`RAY_SERVE` or :data:`PYTORCH`, in any region."""
    from helpers.serving import EndpointError

    name, _, tag = image.rpartition("/")[2].partition(":")
    if name == "ray" and tag.startswith("serve-ml-sagemaker"):
        return RAY_SERVE
    if name == "pytorch-inference":
        return PYTORCH
    raise EndpointError(f"the local SageMaker serves AWS's Ray Serve image (ray:serve-ml-sagemaker-*) and the "
                        f"PyTorch inference image (pytorch-inference:*), not {image or 'an empty image'!r}")


def _fetch_model(url: str, folder: Path) -> None:
    """``model.tar.gz`` from the local S3 (or a ``file://`` path) extracted into ``folder/model``."""
    archive = folder / "model.tar.gz"
    if url.startswith("s3://"):
        try:
            archive.write_bytes(storage.read_object(url))
        except KeyError:
            raise validation_error(f"Could not access model data at {url}.") from None
    else:
        src = Path(url[len("file://"):] if url.startswith("file://") else url)
        if not src.is_file():
            raise validation_error(f"Could not access model data at {url}.")
        shutil.copyfile(src, archive)
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "model", filter="data")

