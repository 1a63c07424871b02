"""The emulator's HTTP front: the operations it executes itself, and moto's server for everything else."""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable
from xml.sax.saxutils import escape as xml_escape

from helpers.emulator import reaper

log = logging.getLogger(__name__)

ACCOUNT_ID = "123456789012"  # moto's default account
DEFAULT_REGION = "us-east-1"
#: Credentials any client may use against the emulator (it accepts every key, as moto does).
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

#: Services whose protocol is rest-json (their errors are JSON, named by a header).
JSON_REST_SERVICES = ("lambda", "sagemaker", "execute-api", "apigateway")
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")


class AwsError(Exception):
    """An error the service would answer with: its code, message and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def validation_error(message: str) -> AwsError:
    return AwsError("ValidationException", message)


Handler = Callable[[dict[str, Any], str], dict[str, Any]]


@dataclass
class Request:
    """A REST request a route handles: what it asked, and a way to hand it to moto unchanged."""

    method: str
    path: str
    match: re.Match[str]
    region: str
    headers: dict[str, str]
    body: bytes
    environ: dict[str, Any]
    moto_app: Callable

    def forward(self) -> tuple[int, dict[str, str], bytes]:
        """moto's answer to this request."""
        environ = {**self.environ, "wsgi.input": io.BytesIO(self.body), "CONTENT_LENGTH": str(len(self.body))}
        status: list[Any] = []
        chunks = self.moto_app(environ, lambda s, h, exc_info=None: status.extend([s, h]))
        body = b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        return int(status[0].split()[0]), dict(status[1]), body


#: ``(request) -> (status, headers, body)``: a REST operation executed here (errors: raise AwsError).
RouteHandler = Callable[[Request], tuple[int, dict[str, str], bytes]]


@dataclass(frozen=True)
class Route:
    service: str  # the signing name in the request's credential scope
    method: str
    pattern: re.Pattern[str]
    handler: RouteHandler
    action: str | None = None  # Query-protocol APIs (IAM): the form's ``Action``, all on ``POST /``


class Gateway:
    """WSGI application: what has an executor here runs here; everything else goes to moto.

    - ``SageMaker.<Operation>`` (JSON protocol) requests with a handler, validated against botocore's
      model of the operation first, so a raw client gets the service's ``ValidationException``;
    - REST :class:`Route` s: the runtime's ``InvokeEndpoint``, Lambda's ``Invoke`` ...

    A handler's unexpected error is an ``InternalFailure`` (HTTP 500), and the server keeps serving.
    """

    def __init__(self, moto_app: Callable, handlers: dict[str, Handler], routes: list[Route] = ()) -> None:
        self.moto_app, self.handlers, self.routes = moto_app, handlers, list(routes)
        self._model = None

    def _operation(self, name: str) -> Any:
        if self._model is None:
            import botocore.session

            self._model = botocore.session.get_session().get_service_model("sagemaker")
        return self._model.operation_model(name)

    def validate(self, operation: str, params: dict[str, Any]) -> None:
        from botocore.validate import ParamValidator

        report = ParamValidator().validate(params, self._operation(operation).input_shape)
        if report.has_errors():
            raise validation_error(report.generate_report())

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
        region, signed_for = (scope.group(1), scope.group(2)) if scope else (DEFAULT_REGION, "")
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        for route in self.routes:
            m = route.pattern.match(path)
            if m and route.method == method and route.service == signed_for:
                if route.action is not None and _query_action(environ) != route.action:
                    continue
                return self._rest(route, m, region, environ, start_response)
        service, _, operation = environ.get("HTTP_X_AMZ_TARGET", "").partition(".")
        handler = self.handlers.get(operation) if service == "SageMaker" else None
        if handler is None:
            return self._moto(environ, start_response, signed_for)
        try:
            raw = _read_body(environ)
            try:
                params = json.loads(raw or b"{}")
            except ValueError:
                raise validation_error("The request body is not valid JSON.") from None
            if not isinstance(params, dict):
                raise validation_error("The request body must be a JSON object.")
            self.validate(operation, params)
            status, body = 200, handler(params, region)
        except AwsError as e:
            status, body = e.status, {"__type": e.code, "message": e.message}
        except Exception as e:  # noqa: BLE001 - the server must survive any request
            log.exception("%s failed", operation)
            status, body = 500, {"__type": "InternalFailure", "message": f"{type(e).__name__}: {e}"}
        data = json.dumps(body, default=_json_default).encode()
        headers = {"Content-Type": "application/x-amz-json-1.1"}
        if status >= 400:
            headers["x-amzn-ErrorType"] = body["__type"]
        return _respond(start_response, status, headers, data)

    def _moto(self, environ: dict[str, Any], start_response: Callable, service: str) -> Iterable[bytes]:
        """moto's answer; an operation moto lacks is a clear ``NotImplemented`` error, never a traceback."""
        try:
            if environ.get("HTTP_X_AMZ_TARGET", "").startswith("SageMaker."):
                return self._moto_sagemaker(environ, start_response)
            return self.moto_app(environ, start_response)
        except NotImplementedError as e:
            status, code, message = 501, "NotImplemented", f"The local SageMaker does not implement this: {e}"
        except Exception as e:  # noqa: BLE001 - the server must survive any request
            log.warning("moto failed on %s %s: %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                        type(e).__name__, e)
            status, code, message = 500, "InternalFailure", f"{type(e).__name__}: {e}"
        if environ.get("HTTP_X_AMZ_TARGET") or service in JSON_REST_SERVICES:
            data = json.dumps({"__type": code, "message": message}).encode()
            headers = {"Content-Type": "application/json", "x-amzn-ErrorType": code}
        else:  # the XML protocols (S3, IAM, STS ...)
            data = (f"<ErrorResponse><Error><Type>Receiver</Type><Code>{code}</Code><Message>{xml_escape(message)}"
                    f"</Message></Error><RequestId>{os.urandom(16).hex()}</RequestId></ErrorResponse>").encode()
            headers = {"Content-Type": "text/xml"}
        return _respond(start_response, status, headers, data)

    def _moto_sagemaker(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        """moto's SageMaker answer without the empty structures it adds for unset members (``"VpcConfig": {}``):
        the service omits them, and the SDK v3's resource classes refuse an empty structure with required fields."""
        captured: list[Any] = []
        chunks = self.moto_app(environ, lambda s, h, exc_info=None: captured.extend([s, h]))
        body = b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        status, headers = captured[0], dict(captured[1])
        if status.startswith("200") and body:
            try:
                body = json.dumps(_without_empty(json.loads(body)), default=_json_default).encode()
            except ValueError:
                pass
        headers.pop("Content-Length", None)
        headers.pop("content-length", None)
        return _respond(start_response, int(status.split()[0]), headers, body)

    def _rest(self, route: Route, match: re.Match[str], region: str, environ: dict[str, Any],
              start_response: Callable) -> Iterable[bytes]:
        """A rest-json operation: errors are named by the ``x-amzn-ErrorType`` header, with JSON bodies."""
        body = _read_body(environ)
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        request = Request(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), match, region, headers, body,
                          environ, self.moto_app)
        try:
            status, out, data = route.handler(request)
        except AwsError as e:
            status, data = e.status, json.dumps({"message": e.message, **getattr(e, "fields", {})}).encode()
            out = {"Content-Type": "application/json", "x-amzn-ErrorType": e.code}
        except Exception as e:  # noqa: BLE001 - the server must survive any request
            log.exception("%s %s failed", request.method, request.path)
            status, data = 500, json.dumps({"message": f"{type(e).__name__}: {e}"}).encode()
            out = {"Content-Type": "application/json", "x-amzn-ErrorType": "InternalFailure"}
        return _respond(start_response, status, out, data)


def _without_empty(value: Any) -> Any:
    """``value`` without dict members that are ``None`` or empty dicts, at any depth."""
    if isinstance(value, dict):
        cleaned = {k: _without_empty(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v is not None and v != {}}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


def _read_body(environ: dict[str, Any]) -> bytes:
    """The request body; read once, and left readable for whoever handles the request next (moto)."""
    if "sagebook.body" not in environ:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["sagebook.body"] = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(environ["sagebook.body"])
    return environ["sagebook.body"]


def _query_action(environ: dict[str, Any]) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(_read_body(environ).decode("utf-8", errors="replace")).get("Action")
    return values[0] if values else None


def _respond(start_response: Callable, status: int, headers: dict[str, str], data: bytes) -> list[bytes]:
    reason = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 501: "Not Implemented"}.get(status, "Error")
    headers = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
    start_response(f"{status} {reason}", [*headers.items(), ("Content-Length", str(len(data))),
                                          ("x-amzn-RequestId", os.urandom(16).hex())])
    return [data]


def _json_default(value: Any) -> Any:
    """Timestamps as epoch seconds, as the JSON protocol sends them."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    return str(value)


class LocalSageMaker:
    """The local SageMaker on a loopback port, started and stopped as a context manager.

    ``work_dir`` holds each job's folder (``emulator/training/NAME/``: the container's ``/opt/ml``).
    ``port=0`` picks a free port. moto keeps its state per process: run one emulator per process at a time
    (starting one begins with an empty account). ``stop_grace_s`` is how long a stopped job has between SIGTERM and
    SIGKILL (the service gives 120 s); ``lambda_pending_s`` how long a new function stays ``Pending``
    (and an updated one ``InProgress``); ``role_propagation_s`` how long Lambda cannot assume a new role;
    ``prewarm`` starts the training jobs' warm interpreter (:mod:`helpers.emulator.warm`) at once, not at the
    first job.
    Leaving the block stops every job, model server and function process it started, then the server.
    """

    def __init__(self, work_dir: str | os.PathLike[str] = ".work", *, port: int = 0, host: str = "127.0.0.1",
                 stop_grace_s: float = 120.0, lambda_pending_s: float = 1.0, role_propagation_s: float = 1.0,
                 prewarm: bool = False) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.lambda_pending_s = lambda_pending_s
        self.role_propagation_s = role_propagation_s
        self.prewarm = prewarm
        self.host, self.port = host, port
        self.stop_grace_s = stop_grace_s
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.training: Any = None
        self.tuning: Any = None
        self.endpoints: Any = None
        self.functions: Any = None
        self._reaper: Any = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "LocalSageMaker":
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        from moto.moto_api._internal.models import moto_api_backend

        from helpers.emulator import iam
        from helpers.emulator.hosting import Endpoints
        from helpers.emulator.lambdas import Functions
        from helpers.emulator.training import TrainingJobs
        from helpers.emulator.tuning import TuningJobs

        from moto.core.config import default_user_config

        # An account has AWS's managed policies (AmazonSageMakerFullAccess ...) to attach to roles.
        default_user_config.setdefault("iam", {})["load_aws_managed_policies"] = True
        moto_api_backend.reset()  # a fresh account: moto's state is per process, so one emulator at a time
        self._reaper = reaper.Reaper().start()  # ends what this starts if this process is killed
        reaper.activate(self._reaper)

        self.training = TrainingJobs(self.work_dir / "emulator" / "training", stop_grace_s=self.stop_grace_s)
        if self.prewarm:  # import PyTorch for the first job while the chapters do other things
            self.training.warm_interpreter()
        self.tuning = TuningJobs(self.training)
        self.endpoints = Endpoints(self.work_dir / "emulator" / "endpoints", warm=self.training.warm_interpreter)
        self.functions = Functions(self.work_dir / "emulator" / "lambda", lambda: self.endpoint_url,
                                   pending_s=self.lambda_pending_s, role_propagation_s=self.role_propagation_s)
        class Dispatcher(DomainDispatcherApplication):
            """moto's dispatcher, remembering which backend serves a host (it lists moto's folders each time)."""

            @functools.lru_cache(maxsize=256)  # noqa: B019 - one dispatcher per emulator, hosts are few
            def get_backend_for_host(self, host: str | None) -> Any:
                return super().get_backend_for_host(host)

        app = Gateway(Dispatcher(create_backend_app),
                      {**self.training.handlers(), **self.tuning.handlers(), **self.endpoints.handlers()},
                      routes=self.endpoints.routes() + self.functions.routes() + iam.routes()
                      + self.training.routes())
        class QuietHandler(MotoRequestHandler):
            protocol_version = "HTTP/1.1"  # werkzeug still closes each connection after its response

            def log_request(self, *args: Any, **kwargs: Any) -> None:  # no line per request on stderr
                pass

        self._server = make_server(self.host, self.port, app, threaded=True, request_handler=QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="local-sagemaker", daemon=True)  # stop() waits for its poll
        self._thread.start()
        log.info("local SageMaker at %s (jobs in %s)", self.endpoint_url, self.work_dir / "emulator")
        return self

    def stop(self) -> None:
        """Stop every model server and running job (their processes end), then the server."""
        if self.functions is not None:
            self.functions.shutdown()
        if self.endpoints is not None:
            self.endpoints.shutdown()
        if self.tuning is not None:
            self.tuning.shutdown()
        if self.training is not None:
            self.training.shutdown()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._reaper is not None:  # everything it adopted has ended: it leaves without ending anything
            self._reaper.stop()
            reaper.activate(None)
            self._reaper = None

    def __enter__(self) -> "LocalSageMaker":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- clients ---------------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def environ(self, region: str = DEFAULT_REGION) -> dict[str, str]:
        """Environment variables that point every AWS client (SDK, boto3, CLI) at this emulator."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_DEFAULT_REGION": region, **CREDENTIALS}

    def client(self, service: str, region: str = DEFAULT_REGION) -> Any:
        """A boto3 client for ``service`` on this emulator."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=region,
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
