"""AWS Lambda function in front of the SageMaker endpoint. Deployable as-is: it needs only boto3.

Environment:

- ``ENDPOINT_NAME`` (required): the endpoint to call;
- ``ALLOW_ORIGIN`` (optional): the value of ``Access-Control-Allow-Origin``; no CORS header without it;
- ``SAGEMAKER_RUNTIME_URL`` (optional): another ``sagemaker-runtime`` address, e.g. a local endpoint.

Events: an HTTP event from the function's URL (payload format 2.0) or API Gateway (a proxy event): the
image as a base64 body with its ``Content-Type`` header, or a JSON body; or a direct invocation
``{"image_b64": "...", "content_type": "image/jpeg"}``. The answer is
``{"statusCode", "headers", "body"}`` with a JSON body; bad events get 400 and endpoint failures a
mapped status, always with a message and never an unhandled exception. Nothing from the invocation
context or the account is echoed back.
"""

import base64
import binascii
import json
import logging
import os
import re

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

logger = logging.getLogger()
logger.setLevel(logging.INFO)

MAX_BODY = 6 * 1024 * 1024  # InvokeEndpoint's payload limit
#: Lambda's limit on a synchronous invocation's whole request payload (the JSON event, base64 image included):
#: an image sent to this function in base64 can be at most about 4.5 MB (``MAX_EVENT * 3 / 4`` less the rest).
MAX_EVENT = 6 * 1024 * 1024
DEFAULT_CONTENT_TYPE = "image/jpeg"
ACCEPTED = ("image/jpeg", "image/png", "application/x-image", "application/x-npy", "application/json")
_client = None


class BadEvent(ValueError):
    """The event cannot be turned into an endpoint request."""


def runtime_client():
    """One client per container (reused across invocations)."""
    global _client
    if _client is None:
        url = os.environ.get("SAGEMAKER_RUNTIME_URL") or None
        extra = {"aws_access_key_id": "local", "aws_secret_access_key": "local"} if url else {}
        _client = boto3.client("sagemaker-runtime", endpoint_url=url,
                               config=Config(retries={"max_attempts": 2, "mode": "standard"}, read_timeout=30),
                               **extra)
    return _client


def _scrub(message):
    """Drop account ids and ARNs from messages that go back to the caller."""
    message = re.sub(r"arn:aws[\w-]*:[^\s\"']+", "<arn>", str(message))
    return re.sub(r"\b\d{12}\b", "<account>", message)


def _first_line(original):
    """The container's own message for a refused request, without what follows it (on AWS, a traceback)."""
    text = str(original or "")
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            text = str(doc.get("error") or doc.get("message") or text)
    except ValueError:
        pass
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return _scrub(lines[0])[:300] if lines else ""


def _header(headers, name):
    for key, value in (headers or {}).items():
        if isinstance(key, str) and key.lower() == name:
            return value
    return None


def _text(value, what):
    if not isinstance(value, str):
        raise BadEvent(f"{what} must be a string, not {type(value).__name__}.")
    return value


def parse_event(event):
    """(body bytes, content type) for the endpoint, or BadEvent: every field's type is checked."""
    if not isinstance(event, dict):
        raise BadEvent("The event must be a JSON object.")
    if "image_b64" in event:  # direct invocation (the console's test event)
        content_type = _text(event.get("content_type", DEFAULT_CONTENT_TYPE), "content_type")
        encoded = _text(event["image_b64"], "image_b64")
        try:
            body = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise BadEvent("image_b64 is not valid base64.") from None
    elif "body" in event:  # API Gateway proxy integration, or a function URL
        headers = event.get("headers")
        if headers is not None and not isinstance(headers, dict):
            raise BadEvent(f"headers must be an object, not {type(headers).__name__}.")
        content_type = _text(_header(headers, "content-type") or DEFAULT_CONTENT_TYPE, "The Content-Type header")
        raw = event.get("body")
        if raw is None:
            raise BadEvent("The request has no body: send an image.")
        raw = _text(raw, "body")
        encoded = event.get("isBase64Encoded", False)
        if not isinstance(encoded, bool):
            raise BadEvent(f"isBase64Encoded must be true or false, not {encoded!r}.")
        if encoded:
            try:
                body = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise BadEvent("The body is marked base64 but does not decode.") from None
        else:
            body = raw.encode("utf-8")
    elif "instances" in event:  # direct invocation with the endpoint's JSON schema
        content_type, body = "application/json", json.dumps(event).encode("utf-8")
    else:
        raise BadEvent('Send an HTTP request with an image body, or {"image_b64": "...", '
                       '"content_type": "image/jpeg"}.')
    content_type = content_type.split(";")[0].strip().lower()
    if content_type not in ACCEPTED:
        raise BadEvent(f"Content type {content_type} is not accepted; use one of {', '.join(ACCEPTED)}.")
    if not body:
        raise BadEvent("The image is empty.")
    if len(body) > MAX_BODY:
        raise BadEvent("The image is larger than 6 MB, the endpoint's limit.")
    return body, content_type


def respond(status, doc):
    headers = {"Content-Type": "application/json"}
    origin = os.environ.get("ALLOW_ORIGIN")
    if origin:
        headers["Access-Control-Allow-Origin"] = origin
    return {"statusCode": status, "headers": headers, "body": json.dumps(doc)}


def _status_for(error):
    code = error.response.get("Error", {}).get("Code", "")
    http = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
    message = error.response.get("Error", {}).get("Message", "")
    if code == "ValidationError" and "not found" in message.lower():
        return 404, "The model endpoint does not exist (was it deleted?)."
    if code in ("ThrottlingException", "TooManyRequestsException") or http == 429:
        return 429, "The endpoint is busy; retry shortly."
    if code in ("ServiceUnavailable", "ModelNotReadyException") or http == 503:
        return 503, "The endpoint is not available right now."
    if code == "ModelError":
        original = int(error.response.get("OriginalStatusCode") or http)
        if 400 <= original < 500:
            return original, _first_line(error.response.get("OriginalMessage")) or "The endpoint refused the request."
        return 502, "The model failed on this request."
    if code == "ValidationError":
        return 400, _scrub(message)
    return 502, "The endpoint call failed."


def lambda_handler(event, context):
    """Entry point: classify the image in the event with the SageMaker endpoint."""
    try:
        body, content_type = parse_event(event)
    except BadEvent as e:
        return respond(400, {"error": str(e)})
    endpoint = os.environ.get("ENDPOINT_NAME")
    if not endpoint:
        logger.error("ENDPOINT_NAME is not set")
        return respond(500, {"error": "The function is not configured (ENDPOINT_NAME)."})
    try:
        resp = runtime_client().invoke_endpoint(EndpointName=endpoint, ContentType=content_type,
                                                Accept="application/json", Body=body)
        result = json.loads(resp["Body"].read())
    except ClientError as e:
        status, message = _status_for(e)
        logger.warning("endpoint error %s: %s", e.response.get("Error", {}).get("Code"), e)
        return respond(status, {"error": message})
    except (BotoCoreError, ValueError) as e:
        logger.warning("endpoint unreachable: %s", e)
        return respond(503, {"error": "The endpoint could not be reached."})
    except Exception:  # noqa: BLE001 - never an unhandled exception towards the caller
        logger.exception("unexpected failure")
        return respond(500, {"error": "Internal error."})
    return respond(200, result)
