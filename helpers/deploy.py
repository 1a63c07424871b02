"""Endpoints with the SageMaker SDK v3's resources: names, images, and removing what a run created.

The chapter makes the calls itself (``Model.create``, ``EndpointConfig.create``, ``Endpoint.create``);
what is here is what those calls need and the teardown, the same on both backends.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from helpers.config import SAGEMAKER_FRAMEWORK_VERSION, SAGEMAKER_PY_VERSION, RunConfig

log = logging.getLogger(__name__)

DEFAULT_INSTANCE_TYPE = "ml.m5.large"
VARIANT = "AllTraffic"


def endpoint_name(cfg: RunConfig, suffix: str = "") -> str:
    """A valid endpoint name (letters, digits and hyphens, at most 63 characters)."""
    base = f"sagebook-{cfg.backbone}-{cfg.dataset}".replace("_", "-").replace(".", "-").lower()
    base = "".join(c if c.isalnum() or c == "-" else "-" for c in base)
    return (base[: 62 - len(suffix)] + suffix).strip("-")


def serving_image(region: str, instance_type: str) -> str:
    """The PyTorch inference container's image URI (TorchServe plus the ``inference.py`` handlers)."""
    from sagemaker.core import image_uris

    return image_uris.retrieve("pytorch", region=region, version=SAGEMAKER_FRAMEWORK_VERSION,
                               py_version=SAGEMAKER_PY_VERSION, instance_type=instance_type, image_scope="inference")


def container_environment(workers: int = 1) -> dict[str, str]:
    """The serving container's settings: the handlers in the artifact's ``code/``, and its worker count."""
    return {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
            "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers)}


def teardown(boto_session: Any, name: str) -> list[str]:
    """Delete an endpoint with everything that bills or blocks a redeploy; what is already gone is skipped.

    In order: its scalable target and scaling policies (autoscaling would otherwise act on a deleted
    endpoint), the endpoint, its endpoint configuration, and its models: those the configuration names plus
    the model named after the endpoint, which a deploy that failed before its configuration existed left
    behind (and which the next deploy would silently reuse).
    """
    from botocore.exceptions import ClientError

    from helpers.serverless import disable_autoscaling

    sm_client = boto_session.client("sagemaker")
    deleted = disable_autoscaling(boto_session.client("application-autoscaling"), name)
    try:
        config = sm_client.describe_endpoint(EndpointName=name)["EndpointConfigName"]
    except ClientError:
        config = name  # the chapter names the configuration after the endpoint
    try:
        variants = sm_client.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]
        models = [v["ModelName"] for v in variants]
    except ClientError:
        models = []
    models += [name] if name not in models else []
    for what, call, kwargs in (
        [("endpoint", sm_client.delete_endpoint, {"EndpointName": name}),
         ("endpoint config", sm_client.delete_endpoint_config, {"EndpointConfigName": config})]
        + [("model", sm_client.delete_model, {"ModelName": m}) for m in models]
    ):
        try:
            call(**kwargs)
            deleted.append(f"{what} {next(iter(kwargs.values()))}")
        except ClientError as e:
            log.info("%s already gone: %s", what, e.response["Error"]["Message"])
    return deleted


def teardown_recorded(record: Mapping[str, Any] | None, boto_session: Any) -> list[str]:
    """Remove the endpoint the manifest's ``endpoint`` stage records (see :func:`teardown`)."""
    return teardown(boto_session, record["name"]) if record else []
