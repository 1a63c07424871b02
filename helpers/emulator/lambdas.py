"""Lambda functions on the local SageMaker: moto keeps them, the emulator runs them.

- ``CreateFunction`` stores the zip (moto) and the function starts ``Pending``; it becomes ``Active``
  after ``pending_s`` seconds, as on the service (wait with boto3's ``function_active_v2`` waiter).
  ``Invoke``, updates and ``PublishVersion`` on a ``Pending`` function are refused with
  ``ResourceConflictException``, as there.
- After ``UpdateFunctionCode`` or ``UpdateFunctionConfiguration`` the function's ``LastUpdateStatus`` is
  ``InProgress`` for ``pending_s`` seconds; another update or ``PublishVersion`` meanwhile is refused
  (wait with ``function_updated_v2``). Invocations go on.
- IAM is eventually consistent: for ``role_propagation_s`` seconds after a role is created, Lambda cannot
  assume it, and ``CreateFunction`` (or a configuration update) naming it fails with
  ``InvalidParameterValueException``, as it does for a few seconds on the service.
- ``Invoke`` runs the handler from the zip in its own process (this interpreter, ``-E -s``, the code
  folder as working directory, as ``/var/task``), with the function's environment plus Lambda's own
  variables. A process serves one invocation at a time and stays warm for the next, like an execution
  environment; concurrent invocations start more (at most :data:`MAX_CONCURRENCY` per function).
  ``AWS_ENDPOINT_URL`` points the handler's boto3 clients at this emulator.
- An exception in the handler is answered as the service answers it: status 200 with
  ``X-Amz-Function-Error: Unhandled`` and ``errorMessage``/``errorType``/``stackTrace``; so are a
  result that is not JSON (``Runtime.MarshalError``) and a run past the function's ``Timeout``.
- A payload over Lambda's limit (6 MB synchronous, 1 MB asynchronous) is refused with
  ``RequestTooLargeException`` (413) before the handler runs.
- Function URLs: ``CreateFunctionUrlConfig`` answers a URL on this server,
  ``http://127.0.0.1:PORT/_lambda-url/ID/`` (the service's is ``https://ID.lambda-url.REGION.on.aws/``).
  A request there becomes the service's payload-format 2.0 event (a binary body base64-encoded), and the
  handler's ``statusCode``/``headers``/``body`` become the HTTP answer. With ``AuthType`` ``AWS_IAM``, a
  request that is not SigV4-signed for ``lambda`` gets 403, as there (the signature itself is not
  checked: there are no real credentials here).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from helpers.emulator import reaper
from helpers.emulator.server import ACCOUNT_ID, CREDENTIALS, AwsError, Request, Route

log = logging.getLogger(__name__)

MAX_CONCURRENCY = 10  # execution environments per function (the account default is 1,000)
MAX_PAYLOAD = 6 * 1024 * 1024  # a synchronous invocation's request payload, as on the service
MAX_ASYNC_PAYLOAD = 1024 * 1024  # an asynchronous (Event) invocation's
API = "/2015-03-31/functions"
URL_API = "/2021-10-31/functions"

#: The runtime loop in the function's process: import the handler once, then one JSON line in, one out.
RUNTIME = r'''
import importlib, json, sys, time, traceback
out, sys.stdout = sys.stdout, sys.stderr  # what the handler prints goes to the log
module, _, function = sys.argv[1].rpartition(".")
try:
    handler, init_error = getattr(importlib.import_module(module), function), None
except Exception as e:
    handler = None
    init_error = {"errorMessage": f"Unable to import module '{module}': {e}", "errorType": "Runtime.ImportModuleError",
                  "stackTrace": []}
class Context:
    def __init__(self, r):
        self.function_name, self.function_version = r["function_name"], "$LATEST"
        self.invoked_function_arn, self.memory_limit_in_mb = r["arn"], r["memory"]
        self.aws_request_id = r["request_id"]
        self.log_group_name, self.log_stream_name = "/aws/lambda/" + r["function_name"], r["log_stream"]
        self._deadline = time.time() + r["timeout"]
    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.time()) * 1000))
out.write('{"ready": true}\n')
out.flush()
for line in sys.stdin:
    r = json.loads(line)
    if init_error:
        resp = {"error": init_error}
    else:
        try:
            result = handler(r["event"], Context(r))
            try:
                resp = {"result": json.loads(json.dumps(result))}
            except (TypeError, ValueError) as e:
                resp = {"error": {"errorMessage": f"Unable to marshal response: {e}", "errorType": "Runtime.MarshalError",
                                  "stackTrace": []}}
        except Exception as e:
            resp = {"error": {"errorMessage": str(e), "errorType": type(e).__name__,
                              "stackTrace": traceback.format_tb(e.__traceback__)}}
    out.write(json.dumps(resp) + "\n")
    out.flush()
'''


@dataclass
class _Worker:
    proc: subprocess.Popen
    sha: str


@dataclass
class _Pool:
    idle: list[_Worker] = field(default_factory=list)
    busy: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Functions:
    """Lambda's CreateFunction (state), Invoke (executed) and DeleteFunction (its processes end)."""

    def __init__(self, root: Path, endpoint_url: Callable[[], str], *, pending_s: float = 1.0,
                 role_propagation_s: float = 1.0) -> None:
        self.root = Path(root)
        self.endpoint_url = endpoint_url
        self.pending_s = pending_s
        self.role_propagation_s = role_propagation_s
        self.pools: dict[tuple[str, str], _Pool] = {}
        self._timers: list[threading.Timer] = []
        self._updating: dict[tuple[str, str], float] = {}  # (region, name): when the update in progress ends

    def routes(self) -> list[Route]:
        name = r"([^/]+)"
        return [Route("lambda", "POST", re.compile(rf"^{API}/?$"), self._create),
                Route("lambda", "POST", re.compile(rf"^{API}/{name}/invocations$"), self._invoke),
                Route("lambda", "DELETE", re.compile(rf"^{API}/{name}/?$"), self._delete),
                Route("lambda", "PUT", re.compile(rf"^{API}/{name}/(code|configuration)$"), self._update),
                Route("lambda", "POST", re.compile(rf"^{API}/{name}/versions$"), self._publish),
                Route("lambda", "GET", re.compile(rf"^{API}/{name}(/configuration)?/?$"), self._get),
                Route("lambda", "POST", re.compile(rf"^{URL_API}/{name}/url/?$"), self._url_config),
                Route("lambda", "GET", re.compile(rf"^{URL_API}/{name}/url/?$"), self._url_config),
                *[Route(signed, method, re.compile(r"^/_lambda-url/([0-9a-f]+)(/.*)?$"), self._invoke_url)
                  for signed in ("lambda", "") for method in ("GET", "POST", "PUT")]]

    @staticmethod
    def backend(region: str) -> Any:
        from moto.awslambda.models import lambda_backends

        return lambda_backends[ACCOUNT_ID][region]

    def _function(self, name: str, region: str) -> Any:
        try:
            return self.backend(region).get_function(name)
        except Exception:  # noqa: BLE001 - moto's UnknownFunctionException
            raise AwsError("ResourceNotFoundException", f"Function not found: arn:aws:lambda:{region}:{ACCOUNT_ID}:"
                           f"function:{name}", 404) from None

    # -- control plane ---------------------------------------------------------------------------
    def _create(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        self._check_role(request)
        status, headers, body = request.forward()
        if status != 201:
            return status, headers, body
        config = json.loads(body)
        fn = self._function(config["FunctionName"], request.region)
        fn.state = "Pending"
        config.update(State="Pending", StateReason="The function is being created.", StateReasonCode="Creating")
        timer = threading.Timer(self.pending_s, lambda: setattr(fn, "state", "Active"))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)
        return status, headers, json.dumps(config).encode()

    def _check_role(self, request: Request) -> None:
        """Refuse a role created less than ``role_propagation_s`` ago, as Lambda does until IAM has propagated it."""
        from moto.iam.models import iam_backends

        try:
            arn = json.loads(request.body or b"{}").get("Role")
        except ValueError:
            return  # moto answers the malformed request
        role = next((r for r in iam_backends[ACCOUNT_ID]["global"].roles.values() if r.arn == arn), None) \
            if arn else None
        if role is None:
            return
        created = role.create_date if role.create_date.tzinfo else role.create_date.replace(tzinfo=timezone.utc)
        if (datetime.now(timezone.utc) - created).total_seconds() < self.role_propagation_s:
            raise AwsError("InvalidParameterValueException",
                           "The role defined for the function cannot be assumed by Lambda.", 400)

    def _name(self, request: Request) -> str:
        name = request.match.group(1)
        return name.split(":")[-1] if name.startswith("arn:") else name

    def _refuse_unless_idle(self, request: Request) -> Any:
        """Updates and PublishVersion need an Active function with no update in progress, as on the service."""
        fn = self._function(self._name(request), request.region)
        if fn.state != "Active":
            raise AwsError("ResourceConflictException", "The operation cannot be performed at this time. The function "
                           f"is currently in the following state: {fn.state}", 409)
        if self._in_progress(request.region, fn.function_name):
            raise AwsError("ResourceConflictException", "The operation cannot be performed at this time. An update "
                           f"is in progress for resource: {fn.function_arn}", 409)
        return fn

    def _in_progress(self, region: str, name: str) -> bool:
        return self._updating.get((region, name), 0.0) > time.monotonic()

    def _update(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        fn = self._refuse_unless_idle(request)
        if request.match.group(2) == "configuration":
            self._check_role(request)
        status, headers, body = request.forward()
        if status >= 300:
            return status, headers, body
        self._updating[(request.region, fn.function_name)] = time.monotonic() + self.pending_s
        return status, headers, json.dumps(_updating(json.loads(body))).encode()

    def _publish(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        self._refuse_unless_idle(request)
        return request.forward()

    def _get(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        """moto's GetFunction/GetFunctionConfiguration, with ``LastUpdateStatus`` while an update is in progress."""
        status, headers, body = request.forward()
        if status != 200 or not self._in_progress(request.region, self._name(request)):
            return status, headers, body
        answer = json.loads(body)
        if "Configuration" in answer:
            answer["Configuration"] = _updating(answer["Configuration"])
        else:
            answer = _updating(answer)
        return status, headers, json.dumps(answer).encode()

    # -- function URLs ---------------------------------------------------------------------------
    def _url_config(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        """moto's Create/GetFunctionUrlConfig, with the URL pointing at this server."""
        status, headers, body = request.forward()
        if status >= 300:
            return status, headers, body
        fn = self._function(self._name(request), request.region)
        url_id = re.search(r"//([0-9a-f]+)\.lambda-url\.", fn.url_config.url)
        if url_id:
            fn.url_config.url = f"{self.endpoint_url().rstrip('/')}/_lambda-url/{url_id.group(1)}/"
        answer = json.loads(body)
        answer["FunctionUrl"] = fn.url_config.url
        return status, headers, json.dumps(answer).encode()

    def _function_by_url(self, url_id: str) -> tuple[Any, str] | tuple[None, None]:
        from moto.awslambda.models import lambda_backends

        for region, backend in lambda_backends[ACCOUNT_ID].items():
            for fn in backend.list_functions():
                config = getattr(fn, "url_config", None)
                if config is not None and f"/_lambda-url/{url_id}/" in config.url:
                    return fn, region
        return None, None

    def _invoke_url(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        """A request to a function URL: payload format 2.0 in, the handler's HTTP answer out."""
        import base64

        fn, region = self._function_by_url(request.match.group(1))
        if fn is None:
            return 404, {"Content-Type": "application/json"}, b'{"Message":"Not Found"}'
        if fn.url_config.config.get("AuthType") == "AWS_IAM" and "/lambda/aws4_request" not in \
                request.headers.get("Authorization", ""):
            return 403, {"Content-Type": "application/json"}, b'{"Message":"Forbidden"}'
        if fn.state != "Active":
            return 503, {"Content-Type": "application/json"}, b'{"Message":"Service Unavailable"}'
        if len(request.body or b"") > MAX_PAYLOAD:
            return 413, {"Content-Type": "application/json"}, b'{"Message":"Request Entity Too Large"}'
        headers = {k.lower(): v for k, v in request.headers.items()}
        content_type = headers.get("content-type", "")
        text = content_type.startswith("text/") or content_type.split(";")[0].strip() in (
            "application/json", "application/x-www-form-urlencoded")
        path = request.match.group(2) or "/"
        stamp = datetime.now(timezone.utc)
        event = {"version": "2.0", "routeKey": "$default", "rawPath": path,
                 "rawQueryString": request.environ.get("QUERY_STRING", ""), "headers": headers,
                 "requestContext": {"accountId": "anonymous", "apiId": request.match.group(1),
                                    "domainName": headers.get("host", ""), "domainPrefix": request.match.group(1),
                                    "http": {"method": request.method, "path": path, "protocol": "HTTP/1.1",
                                             "sourceIp": "127.0.0.1", "userAgent": headers.get("user-agent", "")},
                                    "requestId": str(uuid.uuid4()), "routeKey": "$default", "stage": "$default",
                                    "time": stamp.strftime("%d/%b/%Y:%H:%M:%S +0000"),
                                    "timeEpoch": int(stamp.timestamp() * 1000)},
                 "isBase64Encoded": not text}
        if request.body:
            event["body"] = request.body.decode("utf-8", "replace") if text else base64.b64encode(
                request.body).decode("ascii")
        payload, error = self.run(fn, region, event)
        if error:
            return 502, {"Content-Type": "application/json"}, b'{"Message":"Internal Server Error"}'
        if isinstance(payload, dict) and "statusCode" in payload:
            body = payload.get("body") or ""
            data = base64.b64decode(body) if payload.get("isBase64Encoded") else str(body).encode()
            out = {str(k): str(v) for k, v in (payload.get("headers") or {}).items()}
            return int(payload["statusCode"]), out, data
        return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()

    def _delete(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        answer = request.forward()
        if answer[0] < 300:
            self._stop_pool(self.pools.pop((request.region, request.match.group(1)), None))
        return answer

    def shutdown(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for key in list(self.pools):
            self._stop_pool(self.pools.pop(key))

    @staticmethod
    def _stop_pool(pool: _Pool | None) -> None:
        if pool is None:
            return
        with pool.lock:
            workers, pool.idle = pool.idle, []
        for w in workers:
            _end(w.proc)

    # -- Invoke ----------------------------------------------------------------------------------
    def _invoke(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        fn = self._function(self._name(request), request.region)
        if fn.state != "Active":
            raise AwsError("ResourceConflictException", "The operation cannot be performed at this time. The function "
                           f"is currently in the following state: {fn.state}", 409)
        kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        limit = MAX_ASYNC_PAYLOAD if kind == "Event" else MAX_PAYLOAD
        if len(request.body or b"") > limit:
            raise AwsError("RequestTooLargeException", f"Request must be smaller than {limit} bytes for the "
                           "InvokeFunction operation", 413)
        try:
            event = json.loads(request.body or b"{}")
        except ValueError:
            raise AwsError("InvalidRequestContentException", "Could not parse request body into json: the payload "
                           "is not valid JSON.", 400) from None
        if kind == "DryRun":
            return 204, {}, b""
        if kind == "Event":
            threading.Thread(target=self.run, args=(fn, request.region, event), daemon=True).start()
            return 202, {}, b""
        payload, error = self.run(fn, request.region, event)
        headers = {"Content-Type": "application/json", "X-Amz-Executed-Version": "$LATEST"}
        if error:
            headers["X-Amz-Function-Error"] = "Unhandled"
        return 200, headers, json.dumps(payload).encode()

    def run(self, fn: Any, region: str, event: Any) -> tuple[Any, bool]:
        """Run the handler on ``event`` in a warm process: ``(payload, is_error)``."""
        pool = self.pools.setdefault((region, fn.function_name), _Pool())
        worker = self._acquire(pool, fn, region)
        request_id = str(uuid.uuid4())
        line = json.dumps({"event": event, "function_name": fn.function_name, "arn": fn.function_arn,
                           "memory": int(fn.memory_size or 128), "request_id": request_id,
                           "log_stream": f"{datetime.now(timezone.utc):%Y/%m/%d}/[$LATEST]{worker.proc.pid}",
                           "timeout": float(fn.timeout or 3)})
        keep = False
        try:
            assert worker.proc.stdin is not None and worker.proc.stdout is not None
            worker.proc.stdin.write(line + "\n")
            worker.proc.stdin.flush()
            ready, _, _ = select.select([worker.proc.stdout], [], [], float(fn.timeout or 3))
            if not ready:
                stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                return {"errorMessage": f"{stamp} {request_id} Task timed out after {float(fn.timeout or 3):.2f} "
                                        "seconds"}, True
            answer = worker.proc.stdout.readline()
            if not answer:
                return {"errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: exit status "
                                        f"{worker.proc.wait()}", "errorType": "Runtime.ExitError"}, True
            keep = True
            resp = json.loads(answer)
            return (resp["error"], True) if "error" in resp else (resp["result"], False)
        except (BrokenPipeError, OSError) as e:
            return {"errorMessage": f"RequestId: {request_id} Error: Runtime exited: {e}",
                    "errorType": "Runtime.ExitError"}, True
        finally:
            with pool.lock:
                pool.busy -= 1
                if keep and worker.proc.poll() is None and worker.sha == fn.code_sha_256:
                    pool.idle.append(worker)
                    worker = None  # type: ignore[assignment]
            if worker is not None:
                _end(worker.proc)

    def _acquire(self, pool: _Pool, fn: Any, region: str) -> _Worker:
        with pool.lock:
            while pool.idle:
                w = pool.idle.pop()
                if w.proc.poll() is None and w.sha == fn.code_sha_256:
                    pool.busy += 1
                    return w
                _end(w.proc)  # old code, or ended
            if pool.busy >= MAX_CONCURRENCY:
                raise AwsError("TooManyRequestsException", "Rate Exceeded.", 429)
            pool.busy += 1
        try:
            return self._start(fn, region)
        except BaseException:
            with pool.lock:
                pool.busy -= 1
            raise

    def _start(self, fn: Any, region: str) -> _Worker:
        code = self.root / fn.function_name / fn.code_sha_256.replace("/", "_").replace("+", "-")[:16]
        if not code.is_dir():
            tmp = code.with_name(code.name + f".{os.getpid()}.{threading.get_ident()}")
            with zipfile.ZipFile(io.BytesIO(fn.code_bytes)) as z:
                z.extractall(tmp)  # zipfile drops absolute paths and '..'
            try:
                tmp.rename(code)
            except OSError:  # another invocation extracted it first
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON", "SM_", "SAGEMAKER_"))}
        env.update({str(k): str(v) for k, v in (fn.environment_vars or {}).items()})
        env.update({"AWS_LAMBDA_FUNCTION_NAME": fn.function_name, "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory_size or 128), "AWS_REGION": region,
                    "AWS_DEFAULT_REGION": region, "AWS_ENDPOINT_URL": self.endpoint_url(), "LAMBDA_TASK_ROOT": str(code),
                    "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{fn.function_name}", **CREDENTIALS})
        log_file = open(code.parent / "function.log", "a", encoding="utf-8")
        proc = reaper.adopt(subprocess.Popen([sys.executable, "-u", "-E", "-s", "-c", RUNTIME, fn.handler], cwd=code,
                                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                                             text=True))
        log_file.close()
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        if not ready or not proc.stdout.readline():
            _end(proc)
            raise AwsError("ServiceException", f"The function's runtime did not start (see {code.parent / 'function.log'})",
                           500)
        return _Worker(proc, fn.code_sha_256)


def _updating(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "LastUpdateStatus": "InProgress", "LastUpdateStatusReason": "The function is being updated.",
            "LastUpdateStatusReasonCode": "InProgress"}


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass

