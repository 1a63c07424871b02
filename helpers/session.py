"""Where a run's AWS calls go: the only place the backend matters.

``connect(cfg)`` returns the boto3 session every SageMaker, S3, IAM, Lambda and autoscaling call of a
chapter uses. On ``backend="local"`` it starts (or finds) the run's local SageMaker and points every AWS
client of the process at it; on ``backend="sagemaker"`` it is your account, in ``cfg.region``. Everything
after it (the SDK calls, boto3 calls) is the same code on both.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from helpers import ledger
from helpers.config import ConfigError, RunConfig

log = logging.getLogger(__name__)

LOCAL_REGION = "us-east-1"
#: The execution role the local SageMaker's jobs and endpoints run as (created on first use there).
LOCAL_ROLE_NAME = "SageBookExecutionRole"
SAGEMAKER_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL",)


def region(cfg: RunConfig) -> str | None:
    """The run's region: ``cfg.region``, else us-east-1 locally or your AWS default."""
    return cfg.region or (LOCAL_REGION if cfg.backend == "local" else None)


def quiet_sdk() -> None:
    """Silence what the SDK and botocore say on every call and that tells a reader nothing.

    SDK v3 logs where it looked for a defaults file (INFO, twice), warns "No region provided" when a
    resource is created with a session that has one, and its waits ask for ipywidgets in a notebook;
    botocore logs at INFO that it found ``AWS_ENDPOINT_URL``.
    """
    import warnings

    for name in ("sagemaker.config", "sagemaker.core.utils.utils", "botocore.configprovider"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message='install "ipywidgets"', category=UserWarning)


def connect(cfg: RunConfig) -> Any:
    """The boto3 session of the run (the local SageMaker, started when needed, or your AWS account)."""
    import boto3

    quiet_sdk()

    if cfg.backend == "local":
        from helpers.emulator import background

        server, _ = background.ensure_running(cfg.work_path)
        env = server.environ(region(cfg) or LOCAL_REGION)
        os.environ.update(env)  # the SDK makes its own clients: they must find the local SageMaker too
        sess = boto3.Session(region_name=env["AWS_DEFAULT_REGION"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                             aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        _ensure_bucket(sess, cfg.s3_prefix)
        ledger.watch(sess, cfg.work_path, cfg.backend)  # every resource the run creates from here on
        return sess
    for var in _ENDPOINT_VARS:  # a local run earlier in this process must not redirect real calls
        os.environ.pop(var, None)
    sess = boto3.Session(region_name=region(cfg))
    if not sess.region_name:
        raise ConfigError("No AWS region: pass region='eu-west-1' (or set AWS_DEFAULT_REGION).")
    ledger.watch(sess, cfg.work_path, cfg.backend)
    return sess


def _ensure_bucket(boto_session: Any, s3_prefix: str) -> None:
    from helpers.s3 import parse_s3_uri

    bucket, _ = parse_s3_uri(s3_prefix)
    s3 = boto_session.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError:
        s3.create_bucket(Bucket=bucket)


def execution_role(cfg: RunConfig, boto_session: Any, role: str = "") -> str:
    """The IAM role ARN jobs and endpoints run as: ``role`` when given; locally, one made for the run."""
    if role:
        return role
    if cfg.backend != "local":
        raise ConfigError(
            "backend 'sagemaker' needs role: the ARN of an IAM role that SageMaker can assume, with "
            "AmazonSageMakerFullAccess and access to your S3 prefix (see the guide 'Run on SageMaker').")
    iam = boto_session.client("iam")
    try:
        return iam.get_role(RoleName=LOCAL_ROLE_NAME)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        import json

        arn = iam.create_role(RoleName=LOCAL_ROLE_NAME, AssumeRolePolicyDocument=json.dumps(SAGEMAKER_TRUST),
                              Description="sagebook: the local SageMaker's execution role")["Role"]["Arn"]
        iam.attach_role_policy(RoleName=LOCAL_ROLE_NAME,
                               PolicyArn="arn:aws:iam::aws:policy/AmazonSageMakerFullAccess")
        return arn


def require_in_s3(boto_session: Any, uri: str | None, chapter: str) -> None:
    """Stop with advice when what ``chapter`` put at ``uri`` (an object or a prefix) is gone.

    A new local SageMaker starts with an empty S3, so a chapter run after it restarted finds nothing there.
    """
    from helpers.manifest import PrerequisiteMissing
    from helpers.s3 import parse_s3_uri

    if uri:
        bucket, key = parse_s3_uri(uri)
        try:
            found = boto_session.client("s3").list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("KeyCount")
        except Exception:  # noqa: BLE001 - no bucket, no access: the same advice
            found = 0
        if found:
            return
    where = f"in {uri}" if uri else "recorded"
    raise PrerequisiteMissing(f"What chapter {chapter} wrote is not {where} (a new local SageMaker starts with an "
                              f"empty S3): run chapter {chapter} again.")


def require_endpoint(boto_session: Any, name: str) -> None:
    """Stop with advice when chapter 4's endpoint is not in service (deleted, or the local SageMaker restarted)."""
    from botocore.exceptions import ClientError

    from helpers.manifest import PrerequisiteMissing

    try:
        status = boto_session.client("sagemaker").describe_endpoint(EndpointName=name)["EndpointStatus"]
    except ClientError:
        status = "gone"
    if status != "InService":
        raise PrerequisiteMissing(f"Endpoint {name} is {status}, not InService: run chapter 04_deploy again.")


def simulate_spot_interruption(cfg: RunConfig, boto_session: Any, job_name: str) -> None:
    """Reclaim a running managed spot job's capacity on the local SageMaker: the job is interrupted, restarts
    under its name and resumes from its checkpoint, as on the service. On AWS, spot capacity is reclaimed by
    AWS alone, so this refuses the ``sagemaker`` backend."""
    import json
    import urllib.error
    import urllib.request

    if cfg.backend != "local":
        raise ConfigError("On AWS only AWS reclaims spot capacity; the simulation is the local SageMaker's.")
    url = boto_session.client("sagemaker").meta.endpoint_url.rstrip("/")
    request = urllib.request.Request(f"{url}/_local/training-jobs/{job_name}/interrupt?region="
                                     f"{boto_session.region_name}", method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
    except urllib.error.HTTPError as e:
        raise ConfigError(f"Cannot interrupt {job_name}: {json.loads(e.read() or b'{}').get('message', e)}") from None


def account(boto_session: Any) -> str:
    """The account the session's calls act on."""
    return boto_session.client("sts").get_caller_identity()["Account"]


def teardown(cfg: RunConfig, keep_endpoint: bool = False) -> list[str]:
    """Remove what the run created (its ledger: :func:`helpers.cleanup.clean`) and stop its local SageMaker;
    what was removed. Anything left or failed is an error that names ``python -m helpers.cleanup``."""
    from helpers.cleanup import clean

    report = clean(cfg, keep_endpoint=keep_endpoint)
    if report.errors or report.left:
        raise ConfigError(f"The cleanup did not finish:\n{report}\nRerun: python -m helpers.cleanup "
                          f"--work-dir {cfg.work_path}")
    return report.removed
