"""Deploy a trained model: a local endpoint, or a SageMaker endpoint with the SDK's ``PyTorchModel``.

Both return a predictor with ``predict(data, content_type)`` and ``delete_endpoint()``; on SageMaker
``delete_endpoint()`` also deletes the endpoint configuration and the model (the teardown).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping

from helpers.config import SAGEMAKER_FRAMEWORK_VERSION, SAGEMAKER_PY_VERSION, RunConfig
from helpers.packaging import package_model
from helpers.serving import LocalEndpoint, Predictor, check_model_dir

log = logging.getLogger(__name__)

DEFAULT_INSTANCE_TYPE = "ml.m5.large"


def endpoint_name(cfg: RunConfig, suffix: str = "") -> str:
    """A valid endpoint name (letters, digits and hyphens, at most 63 characters)."""
    base = f"sagebook-{cfg.backbone}-{cfg.dataset}".replace("_", "-").replace(".", "-").lower()
    base = "".join(c if c.isalnum() or c == "-" else "-" for c in base)
    return (base[: 62 - len(suffix)] + suffix).strip("-")


def upload_model(model_dir: str | Path, s3_uri: str, sagemaker_session: Any) -> str:
    """Package ``model_dir`` as ``model.tar.gz`` and upload it under ``s3_uri``; returns its S3 URI."""
    from helpers.s3 import parse_s3_uri

    bucket, prefix = parse_s3_uri(s3_uri)
    key = f"{prefix}/model.tar.gz" if prefix else "model.tar.gz"
    with tempfile.TemporaryDirectory(prefix="sagebook-model-") as tmp:
        tar = package_model(model_dir, Path(tmp) / "model.tar.gz")
        sagemaker_session.boto_session.client("s3").upload_file(str(tar), bucket, key)
    return f"s3://{bucket}/{key}"


class SageMakerEndpoint:
    """A deployed SageMaker endpoint behind the same API as :class:`helpers.serving.LocalEndpoint`."""

    def __init__(self, name: str, sagemaker_session: Any) -> None:
        from sagemaker.deserializers import JSONDeserializer
        from sagemaker.predictor import Predictor as SdkPredictor
        from sagemaker.serializers import IdentitySerializer

        self.endpoint_name = name
        self.session = sagemaker_session
        self.predictor = SdkPredictor(name, sagemaker_session=sagemaker_session,
                                      serializer=IdentitySerializer("image/jpeg"), deserializer=JSONDeserializer())

    @property
    def client(self) -> Any:
        return self.session.sagemaker_runtime_client

    def predict(self, data: bytes, content_type: str = "image/jpeg") -> dict[str, Any]:
        return self.predictor.predict(data, initial_args={"ContentType": content_type, "Accept": "application/json"})

    def delete_endpoint(self) -> None:
        teardown(self.session.sagemaker_client, self.endpoint_name)

    def record(self) -> dict[str, Any]:
        return {"backend": "sagemaker", "name": self.endpoint_name, "region": self.session.boto_region_name}


def teardown(sm_client: Any, name: str) -> list[str]:
    """Delete an endpoint, its endpoint configuration and its models; what is already gone is skipped."""
    from botocore.exceptions import ClientError

    deleted = []
    try:
        config = sm_client.describe_endpoint(EndpointName=name)["EndpointConfigName"]
    except ClientError:
        config = name  # the SDK names the configuration after the endpoint
    try:
        variants = sm_client.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]
        models = [v["ModelName"] for v in variants]
    except ClientError:
        models = []
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


def deploy_sagemaker(cfg: RunConfig, model_dir: str | Path, *, role: str, name: str | None = None,
                     instance_type: str = DEFAULT_INSTANCE_TYPE, instance_count: int = 1,
                     sagemaker_session: Any = None, model_data: str | None = None, wait: bool = True) -> SageMakerEndpoint:
    """``PyTorchModel(model_data, entry_point=inference.py, framework_version, py_version).deploy(...)``."""
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.pytorch import PyTorchModel
    from sagemaker.serializers import IdentitySerializer

    from helpers.sagemaker_jobs import session

    model_dir = check_model_dir(model_dir)
    sess = sagemaker_session or session(cfg)
    name = name or endpoint_name(cfg)
    if model_data is None:
        model_data = upload_model(model_dir, f"{cfg.s3_prefix.rstrip('/')}/models/{name}", sess)
    model = PyTorchModel(model_data=model_data, role=role, entry_point="inference.py",
                         source_dir=str(model_dir / "code"), framework_version=SAGEMAKER_FRAMEWORK_VERSION,
                         py_version=SAGEMAKER_PY_VERSION, sagemaker_session=sess, name=name)
    model.deploy(initial_instance_count=instance_count, instance_type=instance_type, endpoint_name=name,
                 serializer=IdentitySerializer("image/jpeg"), deserializer=JSONDeserializer(), wait=wait)
    return SageMakerEndpoint(name, sess)


def deploy(cfg: RunConfig, model: Mapping[str, Any], *, role: str = "", workers: int = 1,
           instance_type: str = DEFAULT_INSTANCE_TYPE, log_file: str | Path | None = None) -> Predictor:
    """Deploy the model stage of the manifest on the configured backend and return its predictor."""
    if cfg.backend == "local":
        return LocalEndpoint(model["model_dir"], endpoint_name=endpoint_name(cfg), workers=workers,
                             log_file=log_file).start()
    return deploy_sagemaker(cfg, model["model_dir"], role=role, instance_type=instance_type,
                            model_data=model.get("model_data"))


def teardown_recorded(record: Mapping[str, Any] | None, sagemaker_session: Any = None) -> list[str]:
    """Remove the endpoint the manifest's ``endpoint`` stage records (local process or SageMaker resources)."""
    from helpers.serving import stop_local_endpoint

    if not record:
        return []
    if record.get("backend") == "local":
        pid = record.get("pid")
        return [f"local endpoint {record.get('name')} (pid {pid})"] if pid and stop_local_endpoint(pid) else []
    import boto3

    from helpers.serverless import disable_autoscaling

    region = record.get("region") or None
    client = (sagemaker_session.sagemaker_client if sagemaker_session else boto3.client("sagemaker", region_name=region))
    removed = disable_autoscaling(boto3.client("application-autoscaling", region_name=region), record["name"])
    return removed + teardown(client, record["name"])
