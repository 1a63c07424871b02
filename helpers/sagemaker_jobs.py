"""Training and tuning jobs with the SageMaker Python SDK v3, the same calls on both backends.

:func:`helpers.session.connect` decides where the calls go (the local SageMaker or your AWS account);
what is here builds the SDK objects the chapters call: a ``ModelTrainer`` for the staged entry point, with
the framework version from :mod:`helpers.config`, the metric regexes from :mod:`helpers.runtime.metrics`
and the search space from :mod:`helpers.hpo`, and reads their results back.
"""

from __future__ import annotations

import json
import logging
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from helpers.config import SAGEMAKER_FRAMEWORK_VERSION, SAGEMAKER_PY_VERSION, RunConfig
from helpers.hpo import SEARCH_SPACE, TuningResult, coerce
from helpers.packaging import stage_source_dir
from helpers.runtime.metrics import metric_definitions
from helpers.s3 import parse_s3_uri

log = logging.getLogger(__name__)

DEFAULT_INSTANCE_TYPE = "ml.g4dn.xlarge"
#: The SDK's defaults, given in code rather than read from ``~/.config/sagemaker``: no usage telemetry
#: (it would try to reach AWS from the offline backend too).
SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
#: ``TrainingJobStatus`` -> the state names the trials table uses (Optuna's).
TRIAL_STATES = {"Completed": "COMPLETE", "Stopped": "PRUNED", "Failed": "FAIL", "InProgress": "RUNNING",
                "Stopping": "RUNNING"}


def validate_each_config_once() -> None:
    """Make the SDK check a given config against its JSON schema once, not on every lookup.

    ``SageMakerConfig.validate_sagemaker_config`` runs ``jsonschema.validate``, which first checks the SDK's
    whole schema against the JSON Schema metaschema: about 0.45 s on 2 cores, and ``ModelTrainer.train()``
    looks up nine values, so 4 s of every job's start went to checking the same schema again. Whether a
    config is valid cannot change between lookups, so a config that passed once is not checked again; an
    invalid one still raises every time. Installed once, by :func:`sdk_session`.
    """
    from sagemaker.core.config.config_manager import SageMakerConfig

    if getattr(SageMakerConfig.validate_sagemaker_config, "_sagebook_once", False):
        return
    check = SageMakerConfig.validate_sagemaker_config
    passed: set[str] = set()

    def validate_once(sagemaker_config: dict | None = None) -> None:
        key = json.dumps(sagemaker_config, sort_keys=True, default=repr)
        if key not in passed:
            check(sagemaker_config)
            passed.add(key)

    validate_once._sagebook_once = True  # type: ignore[attr-defined]
    SageMakerConfig.validate_sagemaker_config = staticmethod(validate_once)  # type: ignore[method-assign]


def sdk_session(cfg: RunConfig, boto_session: Any) -> Any:
    """A SageMaker SDK session on ``boto_session`` whose default bucket is the one in ``cfg.s3_prefix``."""
    from sagemaker.core.helper.session_helper import Session

    validate_each_config_once()
    bucket, prefix = parse_s3_uri(cfg.s3_prefix)
    return Session(boto_session=boto_session, default_bucket=bucket, default_bucket_prefix=prefix or None,
                   sagemaker_config=SDK_CONFIG)


def training_image(region: str, instance_type: str) -> str:
    """The PyTorch training container's image URI for this region and instance type."""
    from sagemaker.core import image_uris

    return image_uris.retrieve("pytorch", region=region, version=SAGEMAKER_FRAMEWORK_VERSION,
                               py_version=SAGEMAKER_PY_VERSION, instance_type=instance_type, image_scope="training")


def inputs(data: Mapping[str, Any], splits: tuple[str, ...] = ("train", "valid", "test")) -> list[Any]:
    """The data stage's S3 channels as ``InputData``, for the splits asked for."""
    from sagemaker.core.training.configs import InputData

    if not data.get("s3_uri"):
        raise ValueError("The data stage has no S3 URI: run chapter 01_data again.")
    base = data["s3_uri"].rstrip("/")
    return [InputData(channel_name=s, data_source=f"{base}/{Path(data['splits'][s]).name}")
            for s in splits if s in data["splits"]]


def model_trainer(cfg: RunConfig, session: Any, *, role: str, hyperparameters: Mapping[str, Any],
                  base_job_name: str, instance_type: str = DEFAULT_INSTANCE_TYPE, instance_count: int = 1,
                  max_run_s: int = 3 * 3600, use_spot: bool = False, max_wait_s: int = 0,
                  source_dir: str | Path | None = None, environment: Mapping[str, str] | None = None,
                  tensorboard: bool = False) -> Any:
    """A ``ModelTrainer`` for the staged entry point (``train.py``) on the PyTorch training container.

    Output goes to ``{s3_prefix}/output``. Checkpoints go to a prefix of this trainer's own,
    :func:`checkpoint_uri`, since SageMaker restores everything under it into each of the trainer's jobs; the
    entry point keeps each job's own in a subfolder named after the job, so a restarted spot job resumes its
    own and tuning trials, which share the tuner's trainer, never resume each other's. ``instance_count > 1``
    runs torchrun on every instance.
    ``use_spot``: managed spot training, which may be interrupted and then resumes from the checkpoints;
    ``max_wait_s`` (waiting for capacity plus running, at least ``max_run_s``; 0: twice ``max_run_s``).
    ``environment``: the job's variables (``helpers.tracking.job_environment`` turns MLflow tracking on; a
    tuner gives them to every trial). ``tensorboard``: a ``TensorBoardOutputConfig``, so the event files the
    entry point writes to ``/opt/ml/output/tensorboard`` go to ``{s3_prefix}/tensorboard/JOB/tensorboard-output``.
    """
    from sagemaker.core.training.configs import (
        CheckpointConfig,
        Compute,
        MetricDefinition,
        OutputDataConfig,
        SourceCode,
        StoppingCondition,
        TensorBoardOutputConfig,
    )
    from sagemaker.train import ModelTrainer
    from sagemaker.train.distributed import Torchrun

    if use_spot and max_wait_s and max_wait_s < max_run_s:
        raise ValueError(f"max_wait_s ({max_wait_s}) must be at least max_run_s ({max_run_s}): it includes the run.")

    prefix = cfg.s3_prefix.rstrip("/")
    debugger = str(hyperparameters.get("debugger", False)).lower() == "true"  # smdebug shipped only then
    tracking = bool(environment and "MLFLOW_TRACKING_URI" in environment)  # mlflow shipped only then
    # staged in the work folder (the SDK uploads it when the job starts), replaced by the next trainer of that name
    src = Path(source_dir) if source_dir else stage_source_dir(cfg.work_path / "source" / base_job_name,
                                                              debugger=debugger, tracking=tracking or tensorboard,
                                                              backbone=str(hyperparameters.get("backbone", "")))
    hyperparameters, channels = weights_channel(session, prefix, hyperparameters)
    trainer = ModelTrainer(
        training_image=training_image(session.boto_region_name, instance_type),
        source_code=SourceCode(source_dir=str(src), entry_script="train.py"),
        compute=Compute(instance_type=instance_type, instance_count=instance_count,
                        enable_managed_spot_training=use_spot or None),
        distributed=Torchrun() if instance_count > 1 else None,
        hyperparameters=dict(hyperparameters),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=max_run_s,
                                             max_wait_time_in_seconds=(max_wait_s or 2 * max_run_s)
                                             if use_spot else None),
        output_data_config=OutputDataConfig(s3_output_path=f"{prefix}/output"),
        checkpoint_config=CheckpointConfig(s3_uri=checkpoint_uri(prefix, base_job_name)),
        role=role, sagemaker_session=session, base_job_name=base_job_name, input_data_config=channels or None,
        environment=dict(environment) if environment else None,
    )
    if tensorboard:
        trainer = trainer.with_tensorboard_output_config(TensorBoardOutputConfig(
            s3_output_path=f"{prefix}/tensorboard", local_path="/opt/ml/output/tensorboard"))
    return trainer.with_metric_definitions([MetricDefinition(name=m["Name"], regex=m["Regex"])
                                            for m in metric_definitions()])


def weights_channel(session: Any, prefix: str, hyperparameters: Mapping[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """A local ``weights`` file travels as the ``weights`` channel: a path on this machine does not exist in
    the container. The file goes to ``{prefix}/weights/NAME`` (once), the hyperparameter becomes ``NAME``, and
    the entry point finds it in ``SM_CHANNEL_WEIGHTS``."""
    from sagemaker.core.training.configs import Channel, DataSource, S3DataSource

    from helpers.runtime.catalog import WEIGHTS

    hp = dict(hyperparameters)
    weights = str(hp.get("weights") or "none")
    if weights in WEIGHTS:
        return hp, []
    local = Path(weights).expanduser()
    if not local.is_file():
        raise ValueError(f"weights {weights!r} is neither one of {', '.join(WEIGHTS)} nor a file on this machine")
    bucket, key = parse_s3_uri(f"{prefix}/weights/{local.name}")
    s3 = session.boto_session.client("s3")
    try:
        same = s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == local.stat().st_size
    except Exception:  # noqa: BLE001 - not there yet
        same = False
    if not same:
        s3.upload_file(str(local), bucket, key)
    hp["weights"] = local.name
    channel = Channel(channel_name="weights", input_mode="File", data_source=DataSource(s3_data_source=S3DataSource(
        s3_data_type="S3Prefix", s3_uri=f"s3://{bucket}/{key}", s3_data_distribution_type="FullyReplicated")))
    return hp, [channel]


def checkpoint_uri(prefix: str, base_job_name: str) -> str:
    """A trainer's own checkpoint prefix, ``{prefix}/checkpoints/{base_job_name}-{time}-{random}``.

    SageMaker copies everything under a job's ``CheckpointConfig.S3Uri`` into its ``/opt/ml/checkpoints`` before
    it starts. With one prefix for a whole run, every job downloaded every earlier job's checkpoints: chapter 3's
    training job restored the six starts' and twelve trials' (130 MB here; gigabytes for a fine-tuned ResNet-50).
    """
    import secrets
    import time

    return f"{prefix.rstrip('/')}/checkpoints/{base_job_name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def base_job_name(cfg: RunConfig, stage: str) -> str:
    """``sagebook-<stage>-<backbone>``: short enough for the tuner's 32-character job names."""
    return f"sb-{stage}-{cfg.backbone.replace('_', '-')}"[:20].rstrip("-")


# --------------------------------------------------------------------------------------------------
# Results


def tuning_result(tuner: Any, static: Mapping[str, Any], wall_s: float,
                  space: Mapping[str, Any] = SEARCH_SPACE) -> TuningResult:
    """A finished tuning job's trials as a :class:`~helpers.hpo.TuningResult` (the table the chapter shows),
    with a column per dimension of ``space``, the search space the tuner was given."""
    import pandas as pd

    job = tuner.latest_tuning_job.refresh()
    client = tuner.sagemaker_session.sagemaker_client
    summaries = trial_summaries(client, job.hyper_parameter_tuning_job_name)
    rows = []
    for number, s in enumerate(summaries):
        desc = client.describe_training_job(TrainingJobName=s["TrainingJobName"])
        hp = s.get("TunedHyperParameters", {})
        start, end = desc.get("TrainingStartTime"), desc.get("TrainingEndTime")
        rows.append({"number": number, "state": TRIAL_STATES.get(s["TrainingJobStatus"], "FAIL"),
                     "value": (s.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value"),
                     **{k: coerce(k, parse_hyperparameter(hp[k]), space) for k in space if k in hp},
                     "epochs_run": _epochs_run(desc),
                     "duration_s": (end - start).total_seconds() if start and end else None,
                     "job": s["TrainingJobName"]})
    trials = pd.DataFrame(rows)
    best = job.best_training_job
    if best is None or not best.training_job_name:
        raise RuntimeError(f"Tuning job {job.hyper_parameter_tuning_job_name} has no completed trial; "
                           "see the trials table and each job's FailureReason.")
    best_hp = {k: coerce(k, parse_hyperparameter(v), space)
               for k, v in (best.tuned_hyper_parameters or {}).items() if k in space}
    value = best.final_hyper_parameter_tuning_job_objective_metric.value
    return TuningResult(engine="sagemaker", trials=trials, best_hyperparameters=best_hp, best_value=float(value),
                        static=dict(static), wall_s=wall_s,
                        details={"tuning_job": job.hyper_parameter_tuning_job_name,
                                 "best_training_job": best.training_job_name,
                                 "pruned": int(sum(r["state"] == "PRUNED" for r in rows)),
                                 "new_trials": len(rows)})


def trial_summaries(sagemaker_client: Any, tuning_job_name: str) -> list[dict[str, Any]]:
    """Every trial of a tuning job (``ListTrainingJobsForHyperParameterTuningJob``, all pages), by job name."""
    pages = sagemaker_client.get_paginator("list_training_jobs_for_hyper_parameter_tuning_job").paginate(
        HyperParameterTuningJobName=tuning_job_name)
    return sorted((s for page in pages for s in page["TrainingJobSummaries"]), key=lambda s: s["TrainingJobName"])


def _epochs_run(desc: Mapping[str, Any]) -> int | None:
    """The last epoch a job finished (its ``epoch`` metric), when it reported one."""
    for m in desc.get("FinalMetricDataList", []):
        if m["MetricName"] == "epoch":
            return int(m["Value"])
    return None


def parse_hyperparameter(value: str) -> Any:
    """A hyperparameter as SageMaker reports it (JSON text, or a bare string) as its value."""
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def log_tail(boto_session: Any, job_name: str, lines: int = 8) -> list[str]:
    """The last lines of a training job's log in CloudWatch Logs (``/aws/sagemaker/TrainingJobs``)."""
    logs = boto_session.client("logs")
    streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs",
                                        logStreamNamePrefix=f"{job_name}/")["logStreams"]
    out: list[str] = []
    for stream in streams:
        events = logs.get_log_events(logGroupName="/aws/sagemaker/TrainingJobs", limit=lines,
                                     logStreamName=stream["logStreamName"], startFromHead=False)["events"]
        out += [e["message"].rstrip() for e in events]
    return [line for line in out if line][-lines:]


def job_output_path(job: Any) -> str:
    """Where a training job's ``output.tar.gz`` is (the service puts it next to ``model.tar.gz``)."""
    return job.model_artifacts.s3_model_artifacts.rsplit("/", 1)[0] + "/output.tar.gz"


def tensorboard_output_path(job: Any) -> str | None:
    """Where the service uploaded a job's TensorBoard folder (``S3OutputPath/JOB/tensorboard-output``), or None."""
    config = getattr(job, "tensor_board_output_config", None)
    path = getattr(config, "s3_output_path", None) if config is not None else None
    return f"{path.rstrip('/')}/{job.training_job_name}/tensorboard-output" if isinstance(path, str) and path else None


def download_and_extract(session: Any, s3_uri: str, dest: str | Path) -> Path:
    """Download a ``.tar.gz`` from S3 and extract it safely into ``dest`` (no absolute paths, ``..`` or links)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    bucket, key = parse_s3_uri(s3_uri)
    with tempfile.TemporaryDirectory(prefix="sagebook-dl-") as tmp:
        archive = Path(tmp) / Path(key).name
        session.boto_session.client("s3").download_file(bucket, key, str(archive))
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    return dest
