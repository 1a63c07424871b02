"""Remove everything a run created, from its ledger (:mod:`helpers.ledger`): ``python -m helpers.cleanup``.

In dependency order: scaling policies and scalable targets, the Lambda function's URL, the function and
its log group, roles with their policies, endpoints, endpoint configs and models, then training and
tuning jobs (stopped when still running, which is what bills) with what the service wrote for them (their
output and checkpoints in S3, their log streams, a tuning job's trials), and the S3 folders the run
wrote into. What is already gone counts as removed, so a second run finds nothing to do. Afterwards
every recorded resource is looked up again: what the report lists as left is still there.

On the ``sagemaker`` backend the report also gives the run's instance-hours: the jobs' billable seconds
times their instance count, and each endpoint's uptime times its instances.

    python -m helpers.cleanup                      # the default work dir (.work or $SAGEBOOK_WORK_DIR)
    python -m helpers.cleanup --work-dir runs/dogs
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Callable

from helpers.config import RunConfig
from helpers.ledger import Ledger, Resource

log = logging.getLogger(__name__)

#: Deletion order: what depends on something goes before it.
ORDER = ("scaling policy", "scalable target", "function url", "function", "role policy", "attached policy", "role",
         "endpoint", "endpoint config", "model", "tuning job", "training job", "s3 folder")
#: What ``keep_endpoint`` keeps: the endpoint, what serves it and what calls it.
ENDPOINT_KINDS = ("scaling policy", "scalable target", "endpoint", "endpoint config", "model", "function url",
                  "function", "role policy", "attached policy", "role")
GONE = ("NotFound", "NoSuchEntity", "ResourceNotFound", "ObjectNotFound", "ValidationException", "ValidationError",
        "NoSuchKey", "NoSuchBucket")
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"


@dataclass
class Report:
    removed: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: on the sagemaker backend, what was billed: {"ml.m5.large endpoint": hours, "ml.g4dn.xlarge training": ...}
    instance_hours: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def __str__(self) -> str:
        shown = ", ".join(self.removed[:8]) + (f", and {len(self.removed) - 8} more" if len(self.removed) > 8 else "")
        lines = [f"removed {len(self.removed)}: " + (shown if self.removed else "nothing to do")]
        lines.append("left: " + (", ".join(self.left) if self.left else "nothing"))
        lines += [f"error: {e}" for e in self.errors]
        if self.instance_hours:
            lines.append("billed instance-hours: " + ", ".join(f"{k} {v:.3f} h" for k, v in sorted(self.instance_hours.items())))
        return "\n".join(lines)


def _gone(e: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):
        return False
    code = e.response.get("Error", {}).get("Code", "")
    message = e.response.get("Error", {}).get("Message", "").lower()
    return any(g in code for g in GONE) and (not code.startswith("Validation") or "not" in message
                                             or "could not find" in message)


class _Objects:
    """The objects under each top-level prefix of a bucket (``bucket/run/``), listed once and kept up to date as
    they are deleted: a cleanup of a hundred folders makes a few calls, not two hundred."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3
        self._keys: dict[tuple[str, str], set[str]] = {}
        self._doomed: dict[str, set[str]] = {}

    def _listing(self, bucket: str, key_prefix: str) -> set[str]:
        top = key_prefix.split("/", 1)[0] + "/" if "/" in key_prefix else ""
        if (bucket, top) not in self._keys:
            keys: set[str] = set()
            try:
                for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=top):
                    keys.update(o["Key"] for o in page.get("Contents", []))
            except Exception as e:  # noqa: BLE001
                if not _gone(e):
                    raise
            self._keys[(bucket, top)] = keys
        return self._keys[(bucket, top)]

    def under(self, uri: str, recursive: bool) -> list[str]:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        return sorted(k for k in self._listing(bucket, prefix)
                      if k.startswith(prefix) and (recursive or "/" not in k[len(prefix):]))

    def delete(self, uri: str, recursive: bool) -> int:
        """Mark the objects in an S3 folder (directly in it, or also below it) for deletion; how many.
        :meth:`flush` deletes what is marked, a thousand keys a call."""
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        keys = self.under(uri, recursive)
        self._doomed.setdefault(bucket, set()).update(keys)
        self._listing(bucket, prefix).difference_update(keys)
        return len(keys)

    def flush(self) -> None:
        for bucket, keys in self._doomed.items():
            ordered = sorted(keys)
            for i in range(0, len(ordered), 1000):
                self.s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in ordered[i:i + 1000]],
                                                               "Quiet": True})
        self._doomed.clear()

    def forget(self) -> None:
        """List again on the next question (to check what is really left)."""
        self._keys.clear()


def _job_folders(d: dict[str, Any]) -> list[str]:
    """What the service wrote for a training job (its DescribeTrainingJob): output, checkpoints (the entry
    point keeps a job's own in a folder named after it) and TensorBoard's folder."""
    name = d["TrainingJobName"]
    folders = [f"{d['OutputDataConfig']['S3OutputPath'].rstrip('/')}/{name}/"]
    if d.get("CheckpointConfig", {}).get("S3Uri"):
        folders.append(f"{d['CheckpointConfig']['S3Uri'].rstrip('/')}/{name}/")
    if d.get("TensorBoardOutputConfig", {}).get("S3OutputPath"):
        folders.append(f"{d['TensorBoardOutputConfig']['S3OutputPath'].rstrip('/')}/{name}/")
    return folders


class _Cleaner:
    """The delete and look-up calls for each kind, on one backend and region's session."""

    def __init__(self, boto_session: Any, report: Report, bill: bool) -> None:
        self.report = report
        self.hours: dict[str, float] = report.instance_hours if bill else defaultdict(float)
        self.sm, self.aas = boto_session.client("sagemaker"), boto_session.client("application-autoscaling")
        self.lam, self.iam = boto_session.client("lambda"), boto_session.client("iam")
        self.s3, self.logs = boto_session.client("s3"), boto_session.client("logs")
        self.objects = _Objects(self.s3)
        self.jobs: dict[str, dict[str, Any]] = {}  # DescribeTrainingJob answers of ended jobs, for the check
        self._streams: list[str] | None = None

    # -- delete ----------------------------------------------------------------------------------
    def delete(self, r: Resource) -> list[str]:
        """Delete ``r`` (and what the service made for it); the names of what went."""
        return getattr(self, "_delete_" + r.kind.replace(" ", "_"))(r)

    def _delete_scaling_policy(self, r: Resource) -> list[str]:
        self.aas.delete_scaling_policy(PolicyName=r.name, ServiceNamespace=r.detail("namespace"),
                                       ResourceId=r.detail("resource_id"), ScalableDimension=r.detail("dimension"))
        return [f"scaling policy {r.name}"]

    def _delete_scalable_target(self, r: Resource) -> list[str]:
        self.aas.deregister_scalable_target(ServiceNamespace=r.detail("namespace"), ResourceId=r.name,
                                            ScalableDimension=r.detail("dimension"))
        return [f"scalable target {r.name}"]

    def _delete_function_url(self, r: Resource) -> list[str]:
        self.lam.delete_function_url_config(FunctionName=r.name)
        return [f"function URL of {r.name}"]

    def _delete_function(self, r: Resource) -> list[str]:
        self.lam.delete_function(FunctionName=r.name)
        done = [f"function {r.name}"]
        try:
            self.logs.delete_log_group(logGroupName=f"/aws/lambda/{r.name}")
            done.append(f"log group /aws/lambda/{r.name}")
        except Exception as e:  # noqa: BLE001
            if not _gone(e):
                raise
        return done

    def _delete_role_policy(self, r: Resource) -> list[str]:
        self.iam.delete_role_policy(RoleName=r.detail("role"), PolicyName=r.name)
        return [f"role policy {r.detail('role')}/{r.name}"]

    def _delete_attached_policy(self, r: Resource) -> list[str]:
        self.iam.detach_role_policy(RoleName=r.detail("role"), PolicyArn=r.name)
        return [f"attached policy {r.detail('role')}/{r.name.rsplit('/', 1)[-1]}"]

    def _delete_role(self, r: Resource) -> list[str]:
        for name in self.iam.list_role_policies(RoleName=r.name)["PolicyNames"]:  # the run made the role: all its
            self.iam.delete_role_policy(RoleName=r.name, PolicyName=name)          # policies are the run's too
        for p in self.iam.list_attached_role_policies(RoleName=r.name)["AttachedPolicies"]:
            self.iam.detach_role_policy(RoleName=r.name, PolicyArn=p["PolicyArn"])
        self.iam.delete_role(RoleName=r.name)
        return [f"role {r.name}"]

    def _delete_endpoint(self, r: Resource) -> list[str]:
        from helpers.serverless import disable_autoscaling

        d = self.sm.describe_endpoint(EndpointName=r.name)
        disable_autoscaling(self.aas, r.name)  # whatever scaling is left on it, recorded or not
        hours = (datetime.now(UTC) - d["CreationTime"]).total_seconds() / 3600
        try:
            variants = self.sm.describe_endpoint_config(EndpointConfigName=d["EndpointConfigName"])["ProductionVariants"]
        except Exception:  # noqa: BLE001 - its config may be gone; the uptime is still billed
            variants = []
        for v in variants:
            self.hours[f"{v.get('InstanceType', '?')} endpoint"] += hours * v.get(
                "InitialInstanceCount", 1)
        self.sm.delete_endpoint(EndpointName=r.name)
        return [f"endpoint {r.name}"]

    def _delete_endpoint_config(self, r: Resource) -> list[str]:
        self.sm.delete_endpoint_config(EndpointConfigName=r.name)
        return [f"endpoint config {r.name}"]

    def _delete_model(self, r: Resource) -> list[str]:
        self.sm.delete_model(ModelName=r.name)
        return [f"model {r.name}"]

    def _delete_tuning_job(self, r: Resource) -> list[str]:
        d = self.sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=r.name)
        done = []
        if d["HyperParameterTuningJobStatus"] == "InProgress":
            self.sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=r.name)
            done.append(f"tuning job {r.name} (stopped)")
        pages = self.sm.get_paginator("list_training_jobs_for_hyper_parameter_tuning_job").paginate(
            HyperParameterTuningJobName=r.name)
        for trial in (s for page in pages for s in page["TrainingJobSummaries"]):
            done += self._delete_training_job(Resource("training job", trial["TrainingJobName"], r.region, r.backend))
        return done or [f"tuning job {r.name}"]

    def _delete_training_job(self, r: Resource) -> list[str]:
        """A job cannot be deleted, but it can stop billing, and what it wrote can go."""
        d = self.sm.describe_training_job(TrainingJobName=r.name)
        done = []
        if d["TrainingJobStatus"] == "InProgress":
            self.sm.stop_training_job(TrainingJobName=r.name)
            done.append(f"training job {r.name} (stopped)")
        else:
            self.jobs[r.name] = d
        billable = d.get("BillableTimeInSeconds") or 0
        rc = d.get("ResourceConfig") or {}
        self.hours[f"{rc.get('InstanceType', '?')} training"] += billable * rc.get("InstanceCount", 1) / 3600
        for folder in _job_folders(d):
            if self.objects.delete(folder, recursive=True):
                done.append(folder)
        for stream in [s for s in self._log_streams() if s.startswith(f"{r.name}/")]:
            self.logs.delete_log_stream(logGroupName=TRAINING_LOG_GROUP, logStreamName=stream)
            done.append(f"log stream {stream}")
        return done or [f"training job {r.name} (nothing left of it)"]

    def _log_streams(self) -> list[str]:
        """The training log group's streams, listed once (a job's are named ``JOB/algo-1-...``)."""
        if self._streams is None:
            self._streams = []
            try:
                for page in self.logs.get_paginator("describe_log_streams").paginate(logGroupName=TRAINING_LOG_GROUP):
                    self._streams += [st["logStreamName"] for st in page["logStreams"]]
            except Exception as e:  # noqa: BLE001
                if not _gone(e):
                    raise
        return self._streams

    def _delete_s3_folder(self, r: Resource) -> list[str]:
        n = self.objects.delete(r.name, recursive=False)
        return [f"{r.name} ({n} objects)"] if n else []

    # -- look up ---------------------------------------------------------------------------------
    def still_there(self, r: Resource) -> str | None:
        """What is left of ``r`` (a short description), or None."""
        checks: dict[str, Callable[[], str | None]] = {
            "scaling policy": lambda: "policy" if self.aas.describe_scaling_policies(
                ServiceNamespace=r.detail("namespace"), PolicyNames=[r.name],
                ResourceId=r.detail("resource_id"))["ScalingPolicies"] else None,
            "scalable target": lambda: "target" if self.aas.describe_scalable_targets(
                ServiceNamespace=r.detail("namespace"), ResourceIds=[r.name])["ScalableTargets"] else None,
            "function url": lambda: self.lam.get_function_url_config(FunctionName=r.name)["FunctionUrl"],
            "function": lambda: self.lam.get_function(FunctionName=r.name)["Configuration"]["State"],
            "role policy": lambda: self.iam.get_role_policy(RoleName=r.detail("role"), PolicyName=r.name)["PolicyName"],
            "attached policy": lambda: next((p["PolicyArn"] for p in self.iam.list_attached_role_policies(
                RoleName=r.detail("role"))["AttachedPolicies"] if p["PolicyArn"] == r.name), None),
            "role": lambda: self.iam.get_role(RoleName=r.name)["Role"]["Arn"],
            "endpoint": lambda: self.sm.describe_endpoint(EndpointName=r.name)["EndpointStatus"],
            "endpoint config": lambda: self.sm.describe_endpoint_config(EndpointConfigName=r.name)["EndpointConfigName"],
            "model": lambda: self.sm.describe_model(ModelName=r.name)["ModelName"],
            "tuning job": lambda: self._tuning_left(r),
            "training job": lambda: self._job_left(r),
            "s3 folder": lambda: "objects" if self.objects.under(r.name, recursive=False) else None,
        }
        try:
            what = checks[r.kind]()
        except Exception as e:  # noqa: BLE001
            if _gone(e):
                return None
            raise
        return f"{r.kind} {r.name} ({what})" if what else None

    def _job_left(self, r: Resource) -> str | None:
        d = self.jobs.get(r.name) or self.sm.describe_training_job(TrainingJobName=r.name)  # ended: still ended
        if d["TrainingJobStatus"] == "InProgress":
            return "running"
        return next((f"objects in {f}" for f in _job_folders(d) if self.objects.under(f, recursive=True)), None)

    def _tuning_left(self, r: Resource) -> str | None:
        d = self.sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=r.name)
        if d["HyperParameterTuningJobStatus"] == "InProgress":
            return "running"
        pages = self.sm.get_paginator("list_training_jobs_for_hyper_parameter_tuning_job").paginate(
            HyperParameterTuningJobName=r.name)
        for trial in (s for page in pages for s in page["TrainingJobSummaries"]):
            left = self._job_left(Resource("training job", trial["TrainingJobName"], r.region, r.backend))
            if left:
                return f"trial {trial['TrainingJobName']}: {left}"
        return None


def _session(cfg: RunConfig, backend: str, region: str) -> Any | None:
    """A session for resources on ``backend``/``region``; None when they went with a stopped local SageMaker."""
    from helpers import session
    from helpers.emulator import background

    if backend == "local" and background.running(cfg.work_path) is None:
        return None
    return session.connect(cfg.replace(backend=backend, region=region or cfg.region))


def clean(cfg: RunConfig, *, keep_endpoint: bool = False, stop_local: bool = True) -> Report:
    """Delete what the run's ledger records (all but the endpoint and what serves it, with ``keep_endpoint``),
    check that it is gone, and stop the run's local SageMaker (unless ``stop_local`` is false)."""
    from helpers.emulator import background
    from helpers.manifest import Manifest

    ledger, report = Ledger(cfg.work_path), Report()
    pending = [r for r in ledger.entries() if not (keep_endpoint and r.kind in ENDPOINT_KINDS)]
    groups: dict[tuple[str, str], list[Resource]] = defaultdict(list)
    for r in pending:
        groups[(r.backend, r.region)].append(r)
    for (backend, region), resources in groups.items():
        sess = _session(cfg, backend, region)
        if sess is None:  # the local SageMaker that held them has stopped, and its state with it
            ledger.mark_removed(*resources)
            report.removed.append(f"{len(resources)} resource(s) of a stopped local SageMaker")
            continue
        cleaner = _Cleaner(sess, report, bill=backend == "sagemaker")
        resources.sort(key=lambda r: ORDER.index(r.kind) if r.kind in ORDER else len(ORDER))
        gone = []
        for r in resources:
            try:
                report.removed += cleaner.delete(r)
            except Exception as e:  # noqa: BLE001 - go on with the rest; say what failed
                if not _gone(e):
                    report.errors.append(f"{r.kind} {r.name}: {e}")
                    continue
            gone.append(r)
        try:
            cleaner.objects.flush()  # the S3 deletions, batched
        except Exception as e:  # noqa: BLE001 - those stay in the ledger for the next cleanup
            report.errors.append(f"S3 deletions: {e}")
            gone = [r for r in gone if r.kind not in ("s3 folder", "training job", "tuning job")]
        ledger.mark_removed(*gone)  # one write
        cleaner.objects.forget()  # what is left is listed afresh
        for r in resources:
            try:
                left = cleaner.still_there(r)
            except Exception as e:  # noqa: BLE001
                left = f"{r.kind} {r.name} (could not check: {e})"
            if left:
                report.left.append(left)
    if not keep_endpoint:
        Manifest.load(cfg.work_dir).clear("endpoint")
        if stop_local and background.stop(cfg.work_path):
            report.removed.append("the local SageMaker")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.cleanup", description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", default="", help="the run's work dir (default: .work or $SAGEBOOK_WORK_DIR)")
    p.add_argument("--keep-endpoint", action="store_true", help="keep the endpoint and what serves it")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from helpers.manifest import ManifestError

    try:
        report = clean(RunConfig(work_dir=args.work_dir), keep_endpoint=args.keep_endpoint)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 1 if report.errors or report.left else 0


if __name__ == "__main__":
    sys.exit(main())
