"""The ledger: every resource a run creates, on either backend, recorded the moment the create call succeeds.

:func:`watch` hooks the run's boto3 session (``session.connect`` does it), so the chapters' own calls, the
SDK's included, are recorded without a line in the chapters: jobs, models, endpoint configs, endpoints,
scalable targets and policies, the Lambda function, its URL, its role and the role's policies, and every
S3 "folder" the run wrote objects into. What the service itself writes (a job's output and checkpoints,
a tuning job's trials, log streams) is found from those records at cleanup time
(:mod:`helpers.cleanup`).

The ledger lives in the run manifest (``manifest.json``, key ``ledger``), beside the stages and never
dropped with them, so a crashed run's resources are still known to the next run.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from helpers.manifest import LEDGER_KEY, MANIFEST_NAME, locked_manifest

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Resource:
    kind: str  # "training job", "model", "s3 folder", ... (see CREATES)
    name: str  # the name the delete call takes (an S3 folder: s3://bucket/key-prefix/)
    region: str
    backend: str
    created_at: str = ""
    removed_at: str = ""
    details: tuple[tuple[str, str], ...] = ()  # what else the delete call needs (a policy's resource id ...)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.kind, self.name, self.region

    def detail(self, name: str) -> str:
        return dict(self.details).get(name, "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["details"] = dict(self.details)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Resource:
        return cls(**{**d, "details": tuple(sorted((d.get("details") or {}).items()))})


def _s3_folder(params: dict[str, Any]) -> str:
    folder = posixpath.dirname(params["Key"])
    return f"s3://{params['Bucket']}/{folder + '/' if folder else ''}"


#: (service, operation) -> (kind, name from the request, details from the request)
CREATES: dict[tuple[str, str], tuple[str, Any, Any]] = {
    ("sagemaker", "CreateTrainingJob"): ("training job", lambda p: p["TrainingJobName"], None),
    ("sagemaker", "CreateHyperParameterTuningJob"): ("tuning job", lambda p: p["HyperParameterTuningJobName"], None),
    ("sagemaker", "CreateModel"): ("model", lambda p: p["ModelName"], None),
    ("sagemaker", "CreateEndpointConfig"): ("endpoint config", lambda p: p["EndpointConfigName"], None),
    ("sagemaker", "CreateEndpoint"): ("endpoint", lambda p: p["EndpointName"], None),
    ("application-autoscaling", "RegisterScalableTarget"): (
        "scalable target", lambda p: p["ResourceId"],
        lambda p: {"namespace": p["ServiceNamespace"], "dimension": p["ScalableDimension"]}),
    ("application-autoscaling", "PutScalingPolicy"): (
        "scaling policy", lambda p: p["PolicyName"],
        lambda p: {"namespace": p["ServiceNamespace"], "dimension": p["ScalableDimension"],
                   "resource_id": p["ResourceId"]}),
    ("lambda", "CreateFunction"): ("function", lambda p: p["FunctionName"], None),
    ("lambda", "CreateFunctionUrlConfig"): ("function url", lambda p: p["FunctionName"], None),
    ("iam", "CreateRole"): ("role", lambda p: p["RoleName"], None),
    ("iam", "PutRolePolicy"): ("role policy", lambda p: p["PolicyName"], lambda p: {"role": p["RoleName"]}),
    ("iam", "AttachRolePolicy"): ("attached policy", lambda p: p["PolicyArn"], lambda p: {"role": p["RoleName"]}),
    ("s3", "PutObject"): ("s3 folder", _s3_folder, None),
    ("s3", "CreateMultipartUpload"): ("s3 folder", _s3_folder, None),
    ("s3", "CopyObject"): ("s3 folder", _s3_folder, None),
}

#: Removed entries the ledger keeps as history (a book run creates about 180 resources).
HISTORY = 500


class Ledger:
    """The ledger of the run whose manifest is ``work_dir/manifest.json``."""

    def __init__(self, work_dir: str | Path) -> None:
        self.path = Path(work_dir) / MANIFEST_NAME
        self._seen: set[tuple[str, str, str]] = set()

    def entries(self, *, removed: bool = False) -> list[Resource]:
        """What is recorded (and not yet removed, unless ``removed``), in the order it was created."""
        with locked_manifest(self.path) as raw:
            items = [Resource.from_dict(d) for d in raw.get(LEDGER_KEY, [])]
        return [r for r in items if removed or not r.removed_at]

    def add(self, resource: Resource) -> None:
        """Record ``resource`` (once: a create of something recorded and since removed records it again)."""
        if resource.key in self._seen:
            return
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        with locked_manifest(self.path) as raw:
            items = raw.setdefault(LEDGER_KEY, [])
            live = {(d["kind"], d["name"], d["region"]) for d in items if not d.get("removed_at")}
            if resource.key not in live:
                items.append(Resource(**{**asdict(resource), "created_at": stamp, "removed_at": "",
                                         "details": resource.details}).to_dict())
        self._seen.add(resource.key)

    def mark_removed(self, *resources: Resource) -> None:
        """Record that ``resources`` are gone, in one write. The history keeps the newest :data:`HISTORY`
        removed entries: every create and removal rewrites the file, which would otherwise grow with every run."""
        keys = {r.key for r in resources}
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        with locked_manifest(self.path) as raw:
            items = raw.get(LEDGER_KEY, [])
            for d in items:
                if (d["kind"], d["name"], d["region"]) in keys and not d.get("removed_at"):
                    d["removed_at"] = stamp
            removed = [i for i, d in enumerate(items) if d.get("removed_at")]
            if len(removed) > HISTORY:  # the oldest first: entries are in the order they were created
                drop = set(removed[:len(removed) - HISTORY])
                raw[LEDGER_KEY] = [d for i, d in enumerate(items) if i not in drop]
        self._seen.difference_update(keys)


def watch(boto_session: Any, work_dir: str | Path, backend: str) -> Ledger:
    """Record in the run's ledger every resource that a client of ``boto_session`` creates from now on."""
    if getattr(boto_session, "_sagebook_ledger", None) is not None:
        return boto_session._sagebook_ledger
    ledger, region, events = Ledger(work_dir), boto_session.region_name or "", boto_session.events

    def remember(params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        if (model.service_model.service_name, model.name) in CREATES:
            context["sagebook_params"] = dict(params)

    def record(http_response: Any, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        params = context.get("sagebook_params")
        if params is None or http_response is None or http_response.status_code >= 300:
            return
        kind, name, details = CREATES[(model.service_model.service_name, model.name)]
        try:
            resource = Resource(kind, name(params), region, backend,
                                details=tuple(sorted((details(params) if details else {}).items())))
            ledger.add(resource)
        except Exception:  # noqa: BLE001 - recording must never break the call it watches
            log.warning("could not record %s.%s in the ledger", model.service_model.service_name, model.name,
                        exc_info=True)

    events.register("before-parameter-build", remember, unique_id="sagebook-ledger-params")
    events.register("after-call", record, unique_id="sagebook-ledger-record")
    boto_session._sagebook_ledger = ledger
    return ledger
