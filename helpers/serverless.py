"""The Lambda function's packaging, least-privilege role and deployment, and endpoint autoscaling on AWS.

Locally, :func:`invoke_local` runs ``lambda_function.lambda_handler`` in-process with a Lambda-like
context; it calls the local endpoint through the real boto3 client, the same code path as in AWS.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import time
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from helpers.config import temporary_environ

log = logging.getLogger(__name__)

HANDLER_FILE = Path(__file__).with_name("lambda_function.py")
RUNTIME = "python3.12"
VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
INVOCATIONS_METRIC = "SageMakerVariantInvocationsPerInstance"


# --------------------------------------------------------------------------------------------------
# IAM


def endpoint_arn(region: str, account: str, endpoint: str) -> str:
    return f"arn:aws:sagemaker:{region}:{account}:endpoint/{endpoint.lower()}"


def invoke_policy(region: str, account: str, endpoint: str, function: str) -> dict[str, Any]:
    """The function role's only permissions: invoke this one endpoint, and write its own log group."""
    log_group = f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/{function}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "InvokeTheEndpoint", "Effect": "Allow", "Action": "sagemaker:InvokeEndpoint",
             "Resource": endpoint_arn(region, account, endpoint)},
            {"Sid": "CreateOwnLogGroup", "Effect": "Allow", "Action": "logs:CreateLogGroup", "Resource": log_group},
            {"Sid": "WriteOwnLogs", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": f"{log_group}:*"},
        ],
    }


TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


# --------------------------------------------------------------------------------------------------
# Packaging and deployment


def package_zip() -> bytes:
    """The deployment package: ``lambda_function.py`` alone (boto3 is in the Lambda runtime)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(HANDLER_FILE, "lambda_function.py")
    return buf.getvalue()


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    endpoint: str
    region: str
    account: str
    memory_mb: int = 512
    timeout_s: int = 30
    provisioned_concurrency: int = 0
    allow_origin: str = ""


def deploy_function(spec: FunctionSpec, *, iam: Any, lam: Any) -> dict[str, Any]:
    """Create or update the role and the function; optional provisioned concurrency on a published version."""
    from botocore.exceptions import ClientError

    role_name = f"{spec.name}-role"
    try:
        role_arn = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(TRUST_POLICY))["Role"]["Arn"]
    except ClientError as e:
        if e.response["Error"]["Code"] != "EntityAlreadyExists":
            raise
        role_arn = iam.get_role(RoleName=role_name)["Role"]["Arn"]
    iam.put_role_policy(RoleName=role_name, PolicyName="invoke-endpoint",
                        PolicyDocument=json.dumps(invoke_policy(spec.region, spec.account, spec.endpoint, spec.name)))
    env = {"ENDPOINT_NAME": spec.endpoint, **({"ALLOW_ORIGIN": spec.allow_origin} if spec.allow_origin else {})}
    code = package_zip()
    try:
        fn = _retry_while_role_propagates(lambda: lam.create_function(
            FunctionName=spec.name, Runtime=RUNTIME, Role=role_arn, Handler="lambda_function.lambda_handler",
            Code={"ZipFile": code}, Timeout=spec.timeout_s, MemorySize=spec.memory_mb,
            Environment={"Variables": env}, Publish=True))
        lam.get_waiter("function_active_v2").wait(FunctionName=spec.name)  # Pending refuses calls and updates
    except ClientError as e:
        if e.response["Error"]["Code"] != "ResourceConflictException":
            raise
        lam.get_waiter("function_active_v2").wait(FunctionName=spec.name)
        lam.update_function_code(FunctionName=spec.name, ZipFile=code)
        lam.get_waiter("function_updated_v2").wait(FunctionName=spec.name)  # one update at a time
        fn = lam.update_function_configuration(FunctionName=spec.name, Role=role_arn, Timeout=spec.timeout_s,
                                               MemorySize=spec.memory_mb, Environment={"Variables": env})
        lam.get_waiter("function_updated_v2").wait(FunctionName=spec.name)
    result = {"function_arn": fn["FunctionArn"], "role_arn": role_arn, "function_url": function_url(spec.name, lam)}
    if spec.provisioned_concurrency:
        version = lam.publish_version(FunctionName=spec.name)["Version"]
        lam.put_provisioned_concurrency_config(FunctionName=spec.name, Qualifier=version,
                                               ProvisionedConcurrentExecutions=spec.provisioned_concurrency)
        result["provisioned_version"] = version
    return result


#: What Lambda answers while a role created a moment ago is not yet visible to it (IAM is eventually consistent).
_ROLE_NOT_READY = "cannot be assumed"


def _retry_while_role_propagates(call: Callable[[], Any], attempts: int = 8, first_delay_s: float = 1.0,
                                 sleep: Callable[[float], None] = time.sleep) -> Any:
    """``call()``, retried with doubling delays (about a minute in all) while Lambda cannot assume the new role."""
    from botocore.exceptions import ClientError

    delay = first_delay_s
    for attempt in range(attempts):
        try:
            return call()
        except ClientError as e:
            error = e.response.get("Error", {})
            if (error.get("Code") != "InvalidParameterValueException" or _ROLE_NOT_READY not in error.get("Message", "")
                    or attempt == attempts - 1):
                raise
            log.info("the function's new role is not visible to Lambda yet; retrying in %.0f s", delay)
            sleep(delay)
            delay = min(2 * delay, 16.0)
    raise AssertionError("unreachable")


def _delete_each(steps: list[tuple[str, Callable[[], Any]]]) -> list[str]:
    """Run each named deletion; what is already gone (a ClientError) is skipped. Returns what was deleted."""
    from botocore.exceptions import ClientError

    done = []
    for what, call in steps:
        try:
            call()
            done.append(what)
        except ClientError:
            pass
    return done


def function_url(name: str, lam: Any) -> str:
    """The function's URL, created when missing: HTTPS in front of the function, with ``AWS_IAM`` auth, so only
    callers that sign their requests (SigV4, service ``lambda``) and may ``lambda:InvokeFunctionUrl`` get in."""
    from botocore.exceptions import ClientError

    try:
        return lam.get_function_url_config(FunctionName=name)["FunctionUrl"]
    except ClientError as e:
        if e.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
    return lam.create_function_url_config(FunctionName=name, AuthType="AWS_IAM")["FunctionUrl"]


def call_function_url(boto_session: Any, url: str, body: bytes, content_type: str = "image/jpeg",
                      timeout_s: float = 60) -> tuple[int, Any]:
    """POST ``body`` to a function URL, signed with the session's credentials: ``(status, parsed JSON body)``."""
    import urllib.error
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    signed = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": content_type})
    SigV4Auth(boto_session.get_credentials().get_frozen_credentials(), "lambda",
              boto_session.region_name).add_auth(signed)
    request = urllib.request.Request(url, data=body, headers=dict(signed.headers.items()), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            status, data = answer.status, answer.read()
    except urllib.error.HTTPError as e:
        status, data = e.code, e.read()
    try:
        return status, json.loads(data or b"null")
    except ValueError:
        return status, data.decode("utf-8", "replace")


def delete_function(name: str, *, iam: Any, lam: Any) -> list[str]:
    """Delete the function with its URL, and its role; what is already gone is skipped."""
    return _delete_each([
        ("function URL", lambda: lam.delete_function_url_config(FunctionName=name)),
        ("function", lambda: lam.delete_function(FunctionName=name)),
        ("role policy", lambda: iam.delete_role_policy(RoleName=f"{name}-role", PolicyName="invoke-endpoint")),
        ("role", lambda: iam.delete_role(RoleName=f"{name}-role")),
    ])


# --------------------------------------------------------------------------------------------------
# Autoscaling (Application Auto Scaling)


@dataclass(frozen=True)
class ScalingPolicy:
    """Target tracking on invocations per instance (per minute), like the console's default policy."""

    name: str = "invocations-target-tracking"
    min_capacity: int = 1
    max_capacity: int = 3
    target_invocations_per_instance: float = 70.0
    scale_out_cooldown_s: int = 30
    scale_in_cooldown_s: int = 120

    def __post_init__(self) -> None:
        if not 1 <= self.min_capacity <= self.max_capacity:
            raise ValueError(f"need 1 <= min_capacity <= max_capacity, got {self.min_capacity}, {self.max_capacity}")
        if self.target_invocations_per_instance <= 0:
            raise ValueError("target_invocations_per_instance must be > 0")


def resource_id(endpoint: str) -> str:
    return f"endpoint/{endpoint}/variant/{VARIANT}"


def enable_autoscaling(client: Any, endpoint: str, policy: ScalingPolicy) -> dict[str, Any]:
    """``register_scalable_target`` + target-tracking ``put_scaling_policy`` for the endpoint's variant."""
    rid = resource_id(endpoint)
    client.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid,
                                    ScalableDimension=SCALABLE_DIMENSION, MinCapacity=policy.min_capacity,
                                    MaxCapacity=policy.max_capacity)
    return client.put_scaling_policy(
        PolicyName=policy.name, ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=SCALABLE_DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": policy.target_invocations_per_instance,
            "PredefinedMetricSpecification": {"PredefinedMetricType": INVOCATIONS_METRIC},
            "ScaleInCooldown": policy.scale_in_cooldown_s, "ScaleOutCooldown": policy.scale_out_cooldown_s,
        })


def disable_autoscaling(client: Any, endpoint: str, policy_name: str = ScalingPolicy.name) -> list[str]:
    """Remove the scaling policy and the scalable target (before deleting the endpoint)."""
    rid = resource_id(endpoint)
    return _delete_each([
        ("scaling policy", lambda: client.delete_scaling_policy(PolicyName=policy_name, ServiceNamespace="sagemaker",
                                                                ResourceId=rid, ScalableDimension=SCALABLE_DIMENSION)),
        ("scalable target", lambda: client.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid,
                                                                      ScalableDimension=SCALABLE_DIMENSION)),
    ])


# --------------------------------------------------------------------------------------------------
# Local invocation


class LambdaContext:
    """The attributes of AWS Lambda's context object that a handler may read."""

    def __init__(self, function_name: str = "sagebook-classifier", timeout_s: float = 30, memory_mb: int = 512):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:000000000000:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(1000 * (self._deadline - time.monotonic())))


@contextmanager
def local_function(endpoint_name: str, endpoint_url: str, allow_origin: str = "") -> Iterator[Any]:
    """``lambda_function`` configured as it would be in AWS, pointed at a local endpoint."""
    from helpers import lambda_function

    env = {"ENDPOINT_NAME": endpoint_name, "SAGEMAKER_RUNTIME_URL": endpoint_url, "ALLOW_ORIGIN": allow_origin or None,
           "AWS_REGION": os.environ.get("AWS_REGION") or "us-east-1",  # the Lambda runtime sets both
           "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    with temporary_environ(**env):
        importlib.reload(lambda_function)  # a fresh module: a new container, with its own client
        yield lambda_function


def api_gateway_event(image: bytes, content_type: str = "image/jpeg") -> dict[str, Any]:
    """An API Gateway (REST, proxy integration) event carrying an image, as API Gateway sends it."""
    import base64

    return _within_limit({"resource": "/classify", "path": "/classify", "httpMethod": "POST",
                          "headers": {"Content-Type": content_type}, "isBase64Encoded": True,
                          "body": base64.b64encode(image).decode("ascii"),
                          "requestContext": {"accountId": "123456789012", "stage": "prod",
                                             "requestId": str(uuid.uuid4())}}, len(image))


def direct_event(image: bytes, content_type: str = "image/jpeg") -> dict[str, Any]:
    """The direct-invocation event the chapter uses as the console's test event."""
    import base64

    return _within_limit({"image_b64": base64.b64encode(image).decode("ascii"), "content_type": content_type},
                         len(image))


def _within_limit(event: dict[str, Any], image_bytes: int) -> dict[str, Any]:
    """``event``, or a clear error when Lambda would refuse it: 6 MB for the whole event, base64 image included."""
    from helpers.lambda_function import MAX_EVENT

    size = len(json.dumps(event).encode())
    if size > MAX_EVENT:
        raise ValueError(f"A {image_bytes / 1e6:.1f} MB image makes a {size / 1e6:.1f} MB event, and Lambda accepts "
                         f"at most {MAX_EVENT} bytes per synchronous invocation (base64 adds a third): send images "
                         f"up to about {MAX_EVENT * 3 // 4 / 1e6:.1f} MB, or call the endpoint directly (6 MB).")
    return event
