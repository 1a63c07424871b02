"""Endpoints with the SageMaker SDK v3's resources: names, images, and removing what a run created.

The chapter makes the calls itself (``Model.create``, ``EndpointConfig.create``, ``Endpoint.create``);
what is here is what those calls need and the teardown, the same on both backends.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from helpers.config import SAGEMAKER_FRAMEWORK_VERSION, SAGEMAKER_PY_VERSION, RunConfig

log = logging.getLogger(__name__)

DEFAULT_INSTANCE_TYPE = "ml.m5.large"
VARIANT = "AllTraffic"
RAY_SERVE, PYTORCH = "ray-serve", "pytorch"
#: The serving containers a model artifact of this book deploys on (it holds the layout of both).
SERVING_CONTAINERS = (RAY_SERVE, PYTORCH)


def endpoint_name(cfg: RunConfig, suffix: str = "") -> str:
    """A valid endpoint name (letters, digits and hyphens, at most 63 characters)."""
    base = f"sagebook-{cfg.backbone}-{cfg.dataset}".replace("_", "-").replace(".", "-").lower()
    base = "".join(c if c.isalnum() or c == "-" else "-" for c in base)
    return (base[: 62 - len(suffix)] + suffix).strip("-")


def serving_image(region: str, instance_type: str, container: str = RAY_SERVE) -> str:
    """The serving container's image URI: AWS's Ray Serve container (``config.yaml`` + ``deployment.py``), or the
    PyTorch 2.6 inference container (TorchServe plus ``code/inference.py``)."""
    from sagemaker.core import image_uris

    if container == RAY_SERVE:
        return image_uris.retrieve("ray-serve", region=region, version="1", instance_type=instance_type,
                                   image_scope="inference")
    if container == PYTORCH:
        return image_uris.retrieve("pytorch", region=region, version=SAGEMAKER_FRAMEWORK_VERSION,
                                   py_version=SAGEMAKER_PY_VERSION, instance_type=instance_type,
                                   image_scope="inference")
    raise ValueError(f"serving container must be one of {', '.join(SERVING_CONTAINERS)}, got {container!r}")


def container_environment(container: str = RAY_SERVE, workers: int = 1) -> dict[str, str]:
    """The serving container's settings. Ray Serve reads the application from the artifact's ``config.yaml`` and
    only how often its autoscaling metrics are pushed from here; the PyTorch container needs the handlers' place
    in the artifact (``code/``) and its worker count."""
    if container == RAY_SERVE:
        from helpers.runtime.serve_settings import ServeSettings

        return ServeSettings().environment()
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


#: Which container reads each part of a model artifact (paths relative to its root).
_READERS = {"model.pth": "both: the weights", "model_config.json": "both: how to rebuild the network",
            "config.yaml": "Ray Serve: `serve run config.yaml`", "deployment.py": "Ray Serve: deployment:app",
            "code/inference.py": "PyTorch (TorchServe): the handlers",
            "code/requirements.txt": "both: installed at start-up",
            "code/helpers": "both: the handlers' code", "code/train.py": "neither: the training entry point"}


def artifact_layout(model_dir: str | Path) -> Any:
    """The files of a model artifact, and which serving container reads each (a DataFrame)."""
    import pandas as pd

    root = Path(model_dir)
    rows: dict[str, dict[str, Any]] = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        rel = f.relative_to(root).as_posix()
        key = "code/helpers" if rel.startswith("code/helpers/") else rel
        row = rows.setdefault(key, {"path": key + ("/" if key == "code/helpers" else ""), "files": 0, "KiB": 0.0,
                                    "read by": _READERS.get(key, "")})
        row["files"] += 1
        row["KiB"] += f.stat().st_size / 1024
    return pd.DataFrame(list(rows.values())).set_index("path").round(1)
