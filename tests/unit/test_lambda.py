"""The Lambda handler with a stubbed sagemaker-runtime client, and its IAM policy."""

import base64
import io
import json

import pytest
from botocore.exceptions import ClientError

from helpers import lambda_function, serverless

ACCOUNT = "123456789012"


class StubRuntime:
    def __init__(self, answer=None, error=None):
        self.answer, self.error, self.calls = answer or {"predictions": []}, error, []

    def invoke_endpoint(self, **kwargs):
        self.calls.append(kwargs)
        if self.error:
            raise self.error
        return {"Body": io.BytesIO(json.dumps(self.answer).encode()), "ContentType": "application/json"}


@pytest.fixture
def handler(monkeypatch):
    monkeypatch.setenv("ENDPOINT_NAME", "dogs")
    monkeypatch.delenv("ALLOW_ORIGIN", raising=False)

    def use(runtime):
        monkeypatch.setattr(lambda_function, "_client", runtime)
        return lambda event: lambda_function.lambda_handler(event, serverless.LambdaContext())
    return use


def error(code, message, status, **extra):
    return ClientError({"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status},
                        **extra}, "InvokeEndpoint")


def test_api_gateway_and_direct_events(handler):
    rt = StubRuntime({"predictions": [{"top_k": [{"label": "Akita"}]}]})
    call = handler(rt)
    out = call(serverless.api_gateway_event(b"\xff\xd8jpeg", "image/jpeg"))
    assert out["statusCode"] == 200 and json.loads(out["body"])["predictions"][0]["top_k"][0]["label"] == "Akita"
    assert rt.calls[0] == {"EndpointName": "dogs", "ContentType": "image/jpeg", "Accept": "application/json",
                           "Body": b"\xff\xd8jpeg"}
    assert call(serverless.direct_event(b"\x89PNG", "image/png"))["statusCode"] == 200
    assert rt.calls[1]["ContentType"] == "image/png"
    doc = {"instances": [{"b64": base64.b64encode(b"img").decode()}]}
    assert call({"body": json.dumps(doc), "headers": {"content-type": "application/json"}})["statusCode"] == 200
    assert json.loads(rt.calls[2]["Body"]) == doc
    assert call({"body": "x", "headers": {1: "image/png"}})["statusCode"] == 200  # a number is no header name
    assert rt.calls[3]["ContentType"] == "image/jpeg"


@pytest.mark.parametrize("event, fragment", [
    ({}, "Send an HTTP request"), ("not a dict", "JSON object"),
    ({"image_b64": "%%%"}, "not valid base64"), ({"body": None, "headers": {}}, "no body"),
    ({"body": "abc", "isBase64Encoded": True, "headers": {}}, "does not decode"),
    ({"body": "x", "headers": {"Content-Type": "text/html"}}, "not accepted"),
    ({"image_b64": ""}, "empty"),
    ({"image_b64": base64.b64encode(b"x" * (6 * 1024 * 1024 + 1)).decode()}, "larger than 6 MB"),
    # wrong types: each a clear 400, not an exception or a silent misreading
    ({"body": {"image": "x"}, "headers": {}}, "body must be a string, not dict"),
    ({"body": 12, "headers": {}}, "body must be a string, not int"),
    ({"body": "x", "headers": [["Content-Type", "image/png"]]}, "headers must be an object"),
    ({"body": "x", "headers": {"Content-Type": 7}}, "Content-Type header must be a string"),
    ({"body": "eA==", "isBase64Encoded": "false", "headers": {}}, "isBase64Encoded must be true or false"),
    ({"image_b64": 5}, "image_b64 must be a string"),
    ({"image_b64": "eA==", "content_type": ["image/png"]}, "content_type must be a string"),
])
@pytest.mark.reliability
def test_bad_events_get_400(handler, event, fragment):
    rt = StubRuntime()
    out = handler(rt)(event)
    assert out["statusCode"] == 400 and fragment in json.loads(out["body"])["error"] and rt.calls == []


@pytest.mark.parametrize("err, status", [
    (error("ValidationError", f"Endpoint dogs of account {ACCOUNT} not found.", 400), 404),
    (error("ModelError", "Received client error (415) from primary", 424, OriginalStatusCode=415), 415),
    (error("ModelError", "Received server error (500) from primary", 424, OriginalStatusCode=500), 502),
    (error("ThrottlingException", "Rate exceeded", 400), 429),
    (error("ServiceUnavailable", "busy", 503), 503),
    (error("InternalFailure", f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:endpoint/dogs broke", 500), 502),
])
def test_endpoint_errors_are_mapped(handler, err, status):
    out = handler(StubRuntime(error=err))(serverless.direct_event(b"img"))
    assert out["statusCode"] == status
    assert ACCOUNT not in out["body"] and "arn:aws" not in out["body"] and json.loads(out["body"])["error"]


def test_a_refused_request_answers_the_containers_first_line_only(handler):
    """On AWS the container's message for a 4xx (OriginalMessage) can carry the handler's traceback."""
    original = ("Unsupported content type text/plain; send image/jpeg\nTraceback (most recent call last):\n"
                '  File "/opt/ml/model/code/inference.py", line 80, in input_fn\nValueError: ...')
    err = error("ModelError", "Received client error (415) from primary with message ...", 424,
                OriginalStatusCode=415, OriginalMessage=original)
    out = handler(StubRuntime(error=err))(serverless.direct_event(b"img"))
    assert out["statusCode"] == 415
    assert json.loads(out["body"])["error"] == "Unsupported content type text/plain; send image/jpeg"
    as_json = error("ModelError", "...", 424, OriginalStatusCode=400,
                    OriginalMessage=json.dumps({"error": "The image cannot be decoded.\nat line 3"}))
    assert json.loads(handler(StubRuntime(error=as_json))(serverless.direct_event(b"img"))["body"]) == {
        "error": "The image cannot be decoded."}


@pytest.mark.reliability
def test_events_over_lambdas_payload_limit_are_refused_before_sending():
    """6 MB for the whole event: with base64 an image of 4.5 MB no longer fits, though the endpoint takes 6 MB."""
    serverless.direct_event(b"x" * 4_500_000)
    with pytest.raises(ValueError, match=r"at most 6291456 bytes.*up to about 4\.7 MB"):
        serverless.direct_event(b"x" * 4_800_000)
    with pytest.raises(ValueError, match="6291456"):
        serverless.api_gateway_event(b"x" * 4_800_000)


def test_never_an_unhandled_exception(handler):
    out = handler(StubRuntime(error=RuntimeError("boom")))(serverless.direct_event(b"img"))
    assert out["statusCode"] == 500 and "boom" not in out["body"]


def test_no_context_echo_and_no_wildcard_cors(handler, monkeypatch):
    ctx_marker = serverless.LambdaContext("secret-function-name")
    monkeypatch.setattr(lambda_function, "_client", StubRuntime())
    out = lambda_function.lambda_handler(serverless.api_gateway_event(b"img"), ctx_marker)
    text = json.dumps(out)
    assert "secret-function-name" not in text and ctx_marker.aws_request_id not in text and ACCOUNT not in text
    assert "Access-Control-Allow-Origin" not in out["headers"]
    monkeypatch.setenv("ALLOW_ORIGIN", "https://example.org")
    assert lambda_function.lambda_handler(serverless.direct_event(b"i"), ctx_marker)["headers"][
        "Access-Control-Allow-Origin"] == "https://example.org"


def test_missing_configuration(handler, monkeypatch):
    call = handler(StubRuntime())
    monkeypatch.delenv("ENDPOINT_NAME")
    assert call(serverless.direct_event(b"img"))["statusCode"] == 500


def test_least_privilege_policy():
    policy = serverless.invoke_policy("eu-west-1", ACCOUNT, "Dogs-Endpoint", "classifier")
    statements = policy["Statement"]
    actions = sorted(a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"]))
    assert actions == ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "sagemaker:InvokeEndpoint"]
    assert all(s["Effect"] == "Allow" and "*" not in s["Action"] for s in statements)
    invoke = next(s for s in statements if s["Action"] == "sagemaker:InvokeEndpoint")
    assert invoke["Resource"] == f"arn:aws:sagemaker:eu-west-1:{ACCOUNT}:endpoint/dogs-endpoint"
    for s in statements:
        if s["Action"] != "sagemaker:InvokeEndpoint":
            assert s["Resource"].startswith(f"arn:aws:logs:eu-west-1:{ACCOUNT}:log-group:/aws/lambda/classifier")
            assert s["Resource"].count("*") <= 1 and not s["Resource"].endswith("log-group:*")


def test_package_is_the_handler_alone():
    import zipfile

    with zipfile.ZipFile(io.BytesIO(serverless.package_zip())) as zf:
        assert zf.namelist() == ["lambda_function.py"]
        source = zf.read("lambda_function.py").decode()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"base64", "binascii", "json", "logging", "os", "re", "boto3", "botocore"}
