"""Lambda on the local SageMaker: Pending then Active, handlers run from their zip in warm processes."""

import io
import json
import time
import zipfile

import pytest
from botocore.exceptions import ClientError

from helpers import serverless

pytestmark = pytest.mark.aws

HANDLER = '''import json, os, time
def lambda_handler(event, context):
    if event.get("fail"):
        raise ValueError("bad event: " + event["fail"])
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("unserializable"):
        return {"when": object()}
    return {"event": event, "pid": os.getpid(), "env": os.environ.get("ENDPOINT_NAME"),
            "name": context.function_name, "left_ms": context.get_remaining_time_in_millis(),
            "endpoint_url": os.environ.get("AWS_ENDPOINT_URL")}
'''


def zipped(**files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


def role(local_sagemaker):
    iam = local_sagemaker.client("iam")
    return iam.create_role(RoleName="fn-role", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                                                "Action": "sts:AssumeRole"}]}))["Role"]["Arn"]


def invoke(lam, name, event):
    resp = lam.invoke(FunctionName=name, Payload=json.dumps(event))
    return resp.get("FunctionError"), json.loads(resp["Payload"].read())


def create_echo(lam, role_arn):
    return lam.create_function(FunctionName="echo", Runtime="python3.12", Role=role_arn,
                               Handler="lambda_function.lambda_handler", Timeout=2,
                               Code={"ZipFile": zipped(**{"lambda_function.py": HANDLER})},
                               Environment={"Variables": {"ENDPOINT_NAME": "ep-1"}})


@pytest.fixture
def function(local_sagemaker):
    lam = local_sagemaker.client("lambda")
    role_arn = role(local_sagemaker)
    with pytest.raises(ClientError, match="cannot be assumed by Lambda"):  # IAM has not propagated the new role
        create_echo(lam, role_arn)
    created = serverless._retry_while_role_propagates(lambda: create_echo(lam, role_arn))
    assert created["State"] == "Pending"
    with pytest.raises(ClientError) as e:  # as on a fresh account: wait before the first invoke
        lam.invoke(FunctionName="echo", Payload=b"{}")
    assert e.value.response["Error"]["Code"] == "ResourceConflictException"
    lam.get_waiter("function_active_v2").wait(FunctionName="echo", WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    assert lam.get_function(FunctionName="echo")["Configuration"]["State"] == "Active"
    return lam


def test_invoke_runs_the_handler_from_the_zip_with_its_environment(local_sagemaker, function):
    error, out = invoke(function, "echo", {"x": 1})
    assert error is None and out["event"] == {"x": 1} and out["env"] == "ep-1" and out["name"] == "echo"
    assert 0 < out["left_ms"] <= 2000 and out["endpoint_url"] == local_sagemaker.endpoint_url
    _, again = invoke(function, "echo", {"x": 2})
    assert again["pid"] == out["pid"]  # a warm execution environment serves the next invocation


def test_handler_errors_timeouts_and_unserializable_results_are_function_errors(function):
    error, out = invoke(function, "echo", {"fail": "no image"})
    assert error == "Unhandled" and out["errorType"] == "ValueError" and out["errorMessage"] == "bad event: no image"
    assert out["stackTrace"]
    error, out = invoke(function, "echo", {"unserializable": True})
    assert error == "Unhandled" and out["errorType"] == "Runtime.MarshalError"
    started = time.monotonic()
    error, out = invoke(function, "echo", {"sleep": 10})
    assert error == "Unhandled" and "Task timed out after 2.00 seconds" in out["errorMessage"]
    assert time.monotonic() - started < 6
    assert invoke(function, "echo", {"x": 3})[0] is None  # a new environment after the timeout


def test_an_update_is_in_progress_for_a_while_and_refuses_the_next_update(function):
    """As on the service: after an update LastUpdateStatus is InProgress; updates and PublishVersion wait for it."""
    assert function.get_function(FunctionName="echo")["Configuration"]["LastUpdateStatus"] == "Successful"
    code = zipped(**{"lambda_function.py": HANDLER + "# v2\n"})
    answer = function.update_function_code(FunctionName="echo", ZipFile=code)
    assert answer["LastUpdateStatus"] == "InProgress"
    assert function.get_function_configuration(FunctionName="echo")["LastUpdateStatus"] == "InProgress"
    for call in (lambda: function.update_function_configuration(FunctionName="echo", Timeout=3),
                 lambda: function.update_function_code(FunctionName="echo", ZipFile=code),
                 lambda: function.publish_version(FunctionName="echo")):
        with pytest.raises(ClientError, match="An update is in progress") as e:
            call()
        assert e.value.response["Error"]["Code"] == "ResourceConflictException"
    assert invoke(function, "echo", {"x": 1})[0] is None  # invocations go on during an update
    function.get_waiter("function_updated_v2").wait(FunctionName="echo", WaiterConfig={"Delay": 1, "MaxAttempts": 10})
    assert function.get_function(FunctionName="echo")["Configuration"]["LastUpdateStatus"] == "Successful"
    assert function.update_function_configuration(FunctionName="echo", Timeout=3)["LastUpdateStatus"] == "InProgress"
    function.get_waiter("function_updated_v2").wait(FunctionName="echo", WaiterConfig={"Delay": 1, "MaxAttempts": 10})
    assert function.publish_version(FunctionName="echo")["Version"] == "1"


def test_a_pending_function_refuses_updates(local_sagemaker):
    lam = local_sagemaker.client("lambda")
    role_arn = role(local_sagemaker)
    serverless._retry_while_role_propagates(lambda: create_echo(lam, role_arn))
    with pytest.raises(ClientError, match="following state: Pending"):
        lam.update_function_configuration(FunctionName="echo", Timeout=3)


def test_deploy_function_waits_for_the_role_and_each_update(local_sagemaker):
    """Chapter 5's deploy on the emulator's delays: a new role, Pending, then an update of code and configuration."""
    lam, iam = local_sagemaker.client("lambda"), local_sagemaker.client("iam")
    spec = serverless.FunctionSpec("sagebook-classifier", "ep-1", "us-east-1", "123456789012")
    started = time.monotonic()
    first = serverless.deploy_function(spec, iam=iam, lam=lam)
    assert time.monotonic() - started >= local_sagemaker.role_propagation_s  # it waited for the role
    assert lam.get_function(FunctionName=spec.name)["Configuration"]["State"] == "Active"
    again = serverless.deploy_function(spec, iam=iam, lam=lam)  # in place: code, then configuration
    assert again["function_arn"] == first["function_arn"]
    assert lam.get_function(FunctionName=spec.name)["Configuration"]["LastUpdateStatus"] == "Successful"


def test_payloads_over_lambdas_limits_are_refused_before_the_handler_runs(function):
    for kind, size in (("RequestResponse", 6 * 1024 * 1024), ("Event", 1024 * 1024)):
        with pytest.raises(ClientError) as e:
            function.invoke(FunctionName="echo", InvocationType=kind, Payload=json.dumps({"x": "a" * size}))
        assert e.value.response["Error"]["Code"] == "RequestTooLargeException"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert invoke(function, "echo", {"x": "a" * 1_000_000})[0] is None  # under the limit: it runs


def test_a_function_url_with_iam_auth_answers_signed_requests_only(local_sagemaker, function):
    """Payload format 2.0 in, the handler's answer out; AWS_IAM refuses an unsigned request with 403."""
    import urllib.error
    import urllib.request

    import boto3

    url = serverless.function_url("echo", function)
    assert url.startswith(local_sagemaker.endpoint_url) and "/_lambda-url/" in url
    assert serverless.function_url("echo", function) == url  # found, not made twice
    assert function.get_function_url_config(FunctionName="echo")["AuthType"] == "AWS_IAM"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=30)
    assert e.value.code == 403
    session = boto3.Session(region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    status, out = serverless.call_function_url(session, url, b"\x89PNG binary", "image/png")
    assert status == 200 and out["name"] == "echo"
    event = out["event"]
    assert event["version"] == "2.0" and event["requestContext"]["http"]["method"] == "POST"
    assert event["isBase64Encoded"] is True and event["headers"]["content-type"] == "image/png"
    assert __import__("base64").b64decode(event["body"]) == b"\x89PNG binary"
    status, out = serverless.call_function_url(session, url, b'{"fail": "x"}', "application/json")
    assert status == 200 and out["event"]["isBase64Encoded"] is False  # text arrives as text
    assert serverless.delete_function("echo", iam=local_sagemaker.client("iam"), lam=function)[:2] == [
        "function URL", "function"]
    assert serverless.call_function_url(session, url, b"x", "image/png")[0] == 404


def test_delete_function_ends_its_processes(local_sagemaker, function):
    _, out = invoke(function, "echo", {})
    proc = local_sagemaker.functions.pools[("us-east-1", "echo")].idle[0].proc
    assert proc.pid == out["pid"] and proc.poll() is None
    function.delete_function(FunctionName="echo")
    assert proc.wait(timeout=10) is not None
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        function.invoke(FunctionName="echo", Payload=b"{}")


@pytest.mark.slow
def test_the_books_lambda_function_calls_an_emulated_endpoint(local_sagemaker, trained_model, test_image, tmp_path):
    """Chapter 5's path: lambda_function.py from its zip, calling InvokeEndpoint on the local SageMaker."""
    from tests.integration.test_emulator_hosting import create_endpoint, put_model, wait_endpoint

    sm = local_sagemaker.client("sagemaker")
    create_endpoint(sm, "ep-1", put_model(local_sagemaker.client("s3"), trained_model, tmp_path))
    assert wait_endpoint(sm, "ep-1")["EndpointStatus"] == "InService"
    lam = local_sagemaker.client("lambda")
    role_arn = role(local_sagemaker)
    serverless._retry_while_role_propagates(lambda: lam.create_function(
        FunctionName="classifier", Runtime="python3.12", Role=role_arn, Handler="lambda_function.lambda_handler",
        Timeout=30, Code={"ZipFile": serverless.package_zip()}, Environment={"Variables": {"ENDPOINT_NAME": "ep-1"}}))
    lam.get_waiter("function_active_v2").wait(FunctionName="classifier", WaiterConfig={"Delay": 1})
    error, out = invoke(lam, "classifier", serverless.direct_event(test_image, "image/jpeg"))
    assert error is None and out["statusCode"] == 200, out
    assert json.loads(out["body"])["predictions"][0]["top_k"]
    error, out = invoke(lam, "classifier", {"body": "not an image", "headers": {"Content-Type": "text/plain"}})
    assert error is None and 400 <= out["statusCode"] < 500  # the endpoint's ModelError, mapped by the handler


def test_autoscaling_registrations_and_policies_are_stored_as_the_service_stores_them(local_sagemaker):
    """Application Auto Scaling for an endpoint variant (moto's own store, reached through the emulator)."""
    aas = local_sagemaker.client("application-autoscaling")
    resource = "endpoint/ep-1/variant/AllTraffic"
    dimension = "sagemaker:variant:DesiredInstanceCount"
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=dimension,
                                 MinCapacity=1, MaxCapacity=3)
    aas.put_scaling_policy(PolicyName="invocations", ServiceNamespace="sagemaker", ResourceId=resource,
                           ScalableDimension=dimension, PolicyType="TargetTrackingScaling",
                           TargetTrackingScalingPolicyConfiguration={
                               "TargetValue": 70.0, "ScaleOutCooldown": 30, "ScaleInCooldown": 120,
                               "PredefinedMetricSpecification": {
                                   "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}})
    target = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"][0]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (resource, 1, 3)
    policy = aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"][0]
    assert policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 70.0
    aas.delete_scaling_policy(PolicyName="invocations", ServiceNamespace="sagemaker", ResourceId=resource,
                              ScalableDimension=dimension)
    aas.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=dimension)
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
