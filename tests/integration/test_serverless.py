"""The Lambda function against the local endpoint (real boto3), and its AWS deployment and autoscaling on moto."""

import json

import boto3
import pytest
from moto import mock_aws

from helpers import serverless
from helpers.serverless import FunctionSpec, ScalingPolicy


def client_mistakes() -> list[tuple[bytes, str, str]]:
    """Requests that once got a 500 from the endpoint (and a 502 from the function): empty arrays, deep JSON."""
    import io

    import numpy as np

    out = []
    for shape in ((0, 32, 32, 3), (1, 0, 0, 3)):
        buf = io.BytesIO()
        np.save(buf, np.zeros(shape, dtype=np.uint8))
        out.append((buf.getvalue(), "application/x-npy", "no pixels"))
    return [*out, (b"[" * 100_000 + b"]" * 100_000, "application/json", "nested too deeply")]


@pytest.mark.slow
def test_handler_calls_the_local_endpoint_through_boto3(trained_model, test_image):
    from helpers.serving import LocalEndpoint

    with LocalEndpoint(trained_model, endpoint_name="dogs") as ep:
        with serverless.local_function("dogs", ep.endpoint_url) as fn:
            ok = fn.lambda_handler(serverless.api_gateway_event(test_image), serverless.LambdaContext())
            assert ok["statusCode"] == 200
            assert json.loads(ok["body"])["predictions"][0]["top_k"][0]["label"] == "Afghan hound"
            bad = fn.lambda_handler(serverless.api_gateway_event(b"junk", "image/png"), serverless.LambdaContext())
            assert bad["statusCode"] == 400 and "decodable" in json.loads(bad["body"])["error"]
            for body, content_type, says in client_mistakes():  # 400 through the function, never retried into 502
                out = fn.lambda_handler(serverless.api_gateway_event(body, content_type), serverless.LambdaContext())
                assert out["statusCode"] == 400 and says in json.loads(out["body"])["error"], (content_type, out)
        with serverless.local_function("cats", ep.endpoint_url) as fn:
            missing = fn.lambda_handler(serverless.direct_event(test_image), serverless.LambdaContext())
            assert missing["statusCode"] == 404


@pytest.fixture
def aws(aws_credentials):
    with mock_aws():
        yield


@pytest.mark.aws
def test_deploy_function_with_its_role(aws):
    iam, lam = boto3.client("iam"), boto3.client("lambda")
    provisioned = []

    def provisioned_concurrency(params, **kwargs):  # moto has no provisioned concurrency: answer like Lambda
        provisioned.append(params)
        return None

    def short_circuit(**kwargs):
        return (type("R", (), {"status_code": 202, "headers": {}})(), {"Status": "IN_PROGRESS"})

    lam.meta.events.register("before-parameter-build.lambda.PutProvisionedConcurrencyConfig", provisioned_concurrency)
    lam.meta.events.register("before-call.lambda.PutProvisionedConcurrencyConfig", short_circuit)
    spec = FunctionSpec(name="sagebook-classifier", endpoint="dogs", region="us-east-1", account="123456789012",
                        provisioned_concurrency=2)
    out = serverless.deploy_function(spec, iam=iam, lam=lam)
    fn = lam.get_function(FunctionName=spec.name)["Configuration"]
    assert fn["Handler"] == "lambda_function.lambda_handler" and fn["Runtime"] == serverless.RUNTIME
    assert fn["Environment"]["Variables"] == {"ENDPOINT_NAME": "dogs"} and fn["Role"] == out["role_arn"]
    policy = iam.get_role_policy(RoleName="sagebook-classifier-role", PolicyName="invoke-endpoint")["PolicyDocument"]
    policy = json.loads(policy) if isinstance(policy, str) else policy
    assert policy == serverless.invoke_policy("us-east-1", "123456789012", "dogs", spec.name)
    assert provisioned == [{"FunctionName": spec.name, "Qualifier": out["provisioned_version"],
                            "ProvisionedConcurrentExecutions": 2}]
    assert out["provisioned_version"] in {v["Version"] for v in lam.list_versions_by_function(
        FunctionName=spec.name)["Versions"]}
    serverless.deploy_function(spec, iam=iam, lam=lam)  # a second deployment updates in place
    assert lam.get_function_url_config(FunctionName=spec.name)["AuthType"] == "AWS_IAM"
    assert out["function_url"] == lam.get_function_url_config(FunctionName=spec.name)["FunctionUrl"]
    assert set(serverless.delete_function(spec.name, iam=iam, lam=lam)) == {"function URL", "function",
                                                                            "role policy", "role"}
    assert lam.list_functions()["Functions"] == []


@pytest.mark.aws
def test_autoscaling_policy_and_teardown(aws):
    aas = boto3.client("application-autoscaling")
    policy = ScalingPolicy(max_capacity=3, scale_out_cooldown_s=30, scale_in_cooldown_s=120)
    serverless.enable_autoscaling(aas, "dogs", policy)
    target = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"][0]
    assert target["ResourceId"] == "endpoint/dogs/variant/AllTraffic"
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
    p = aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"][0]
    conf = p["TargetTrackingScalingPolicyConfiguration"]
    assert p["PolicyType"] == "TargetTrackingScaling"
    assert conf["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    assert (conf["TargetValue"], conf["ScaleOutCooldown"], conf["ScaleInCooldown"]) == (70.0, 30, 120)
    assert serverless.disable_autoscaling(aas, "dogs") == ["scaling policy", "scalable target"]
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []


def test_policy_validation():
    with pytest.raises(ValueError):
        ScalingPolicy(min_capacity=3, max_capacity=2)


def test_create_function_waits_while_a_new_role_propagates():
    """IAM is eventually consistent: Lambda refuses a role created a moment ago. The deploy retries that error
    with growing delays, and no other."""
    from botocore.exceptions import ClientError

    not_yet = ClientError({"Error": {"Code": "InvalidParameterValueException",
                                     "Message": "The role defined for the function cannot be assumed by Lambda."}},
                          "CreateFunction")
    answers, slept = [not_yet, not_yet, {"FunctionArn": "arn:fn"}], []

    def create():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert serverless._retry_while_role_propagates(create, sleep=slept.append) == {"FunctionArn": "arn:fn"}
    assert slept == [1.0, 2.0]
    other = ClientError({"Error": {"Code": "InvalidParameterValueException", "Message": "Runtime is wrong"}},
                        "CreateFunction")
    with pytest.raises(ClientError, match="Runtime is wrong"):
        serverless._retry_while_role_propagates(lambda: (_ for _ in ()).throw(other), sleep=slept.append)
    with pytest.raises(ClientError, match="cannot be assumed"):  # it gives up in the end
        serverless._retry_while_role_propagates(lambda: (_ for _ in ()).throw(not_yet), attempts=3,
                                                sleep=slept.append)
