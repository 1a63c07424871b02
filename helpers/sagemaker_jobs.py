"""The sagemaker backend: training jobs and tuning jobs with the SageMaker Python SDK v2.

The estimator runs the same staged ``source_dir`` as the local backend, with the framework and
Python versions from :mod:`helpers.config`, the metric regexes from :mod:`helpers.runtime.metrics` and the
search space from :mod:`helpers.hpo`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from helpers.config import SAGEMAKER_FRAMEWORK_VERSION, SAGEMAKER_PY_VERSION, RunConfig
from helpers.hpo import SEARCH_SPACE, TuningResult, coerce, sagemaker_ranges
from helpers.runtime.metrics import OBJECTIVE_METRIC, OBJECTIVE_TYPE, metric_definitions
from helpers.packaging import stage_source_dir

log = logging.getLogger(__name__)

DEFAULT_INSTANCE_TYPE = "ml.g4dn.xlarge"


def session(cfg: RunConfig, boto_session: Any | None = None) -> Any:
    """A SageMaker session for ``cfg.region`` whose default bucket is the one in ``cfg.s3_prefix``."""
    import boto3
    import sagemaker

    from helpers.s3 import parse_s3_uri

    boto_session = boto_session or boto3.Session(region_name=cfg.region or None)
    bucket, _ = parse_s3_uri(cfg.s3_prefix)
    return sagemaker.Session(boto_session=boto_session, default_bucket=bucket)


def channels(data: Mapping[str, Any], splits: tuple[str, ...] = ("train", "valid", "test")) -> dict[str, str]:
    """S3 channels of the data stage: ``{"train": "s3://.../train", ...}`` for the splits asked for."""
    if not data.get("s3_uri"):
        raise ValueError("The data stage has no S3 URI: run chapter 01_data with backend='sagemaker' first.")
    base = data["s3_uri"].rstrip("/")
    return {s: f"{base}/{Path(data['splits'][s]).name}" for s in splits if s in data["splits"]}


def estimator(cfg: RunConfig, *, role: str, hyperparameters: Mapping[str, Any],
              instance_type: str = DEFAULT_INSTANCE_TYPE, instance_count: int = 1, sagemaker_session: Any = None,
              use_spot: bool = False, max_run_s: int = 3 * 3600, source_dir: str | Path | None = None,
              **kwargs: Any) -> Any:
    """A ``sagemaker.pytorch.PyTorch`` estimator for the training entry point.

    Checkpoints go to ``{s3_prefix}/checkpoints/`` so spot training resumes where it stopped;
    ``instance_count > 1`` turns on ``torch_distributed`` (torchrun on every instance).
    """
    from sagemaker.pytorch import PyTorch

    prefix = cfg.s3_prefix.rstrip("/")
    src = Path(source_dir) if source_dir else stage_source_dir(Path(tempfile.mkdtemp(prefix="sagebook-src-")) / "src")
    extra: dict[str, Any] = {}
    if instance_count > 1:
        extra["distribution"] = {"torch_distributed": {"enabled": True}}
    if use_spot:
        extra.update(use_spot_instances=True, max_wait=max_run_s * 2)
    kwargs.setdefault("debugger_hook_config", False)  # our hook writes to the job output unless told otherwise
    return PyTorch(
        entry_point="train.py", source_dir=str(src), role=role,
        framework_version=SAGEMAKER_FRAMEWORK_VERSION, py_version=SAGEMAKER_PY_VERSION,
        instance_type=instance_type, instance_count=instance_count,
        hyperparameters=dict(hyperparameters), metric_definitions=metric_definitions(),
        output_path=f"{prefix}/output", checkpoint_s3_uri=f"{prefix}/checkpoints",
        code_location=f"{prefix}/code", max_run=max_run_s, sagemaker_session=sagemaker_session,
        base_job_name=f"sagebook-{cfg.backbone.replace('_', '-')}", **extra, **kwargs,
    )


def tuner(est: Any, *, max_jobs: int = 12, max_parallel_jobs: int = 2,
          space: Mapping[str, Any] = SEARCH_SPACE) -> Any:
    """A ``HyperparameterTuner`` on the validation metric with automatic early stopping."""
    from sagemaker.tuner import HyperparameterTuner

    return HyperparameterTuner(
        est, objective_metric_name=OBJECTIVE_METRIC, objective_type=OBJECTIVE_TYPE,
        hyperparameter_ranges=sagemaker_ranges(space), metric_definitions=metric_definitions(),
        max_jobs=max_jobs, max_parallel_jobs=max_parallel_jobs, early_stopping_type="Auto",
        base_tuning_job_name=est.base_job_name[:20],
    )


def tune_sagemaker(cfg: RunConfig, data: Mapping[str, Any], *, role: str, static: Mapping[str, Any],
                   max_jobs: int = 12, max_parallel_jobs: int = 2, instance_type: str = DEFAULT_INSTANCE_TYPE,
                   sagemaker_session: Any = None, wait: bool = True) -> TuningResult | Any:
    """Submit a tuning job on the train and valid channels (never test); with ``wait``, its results."""
    sess = sagemaker_session or session(cfg)
    est = estimator(cfg, role=role, hyperparameters=static, instance_type=instance_type, sagemaker_session=sess)
    t = tuner(est, max_jobs=max_jobs, max_parallel_jobs=max_parallel_jobs)
    start = time.perf_counter()
    t.fit(channels(data, ("train", "valid")), wait=wait)
    if not wait:
        return t
    return tuning_result(t, dict(static), time.perf_counter() - start)


def tuning_result(t: Any, static: dict[str, Any], wall_s: float) -> TuningResult:
    """The tuner's training jobs as a :class:`~helpers.hpo.TuningResult`."""
    df = t.analytics().dataframe()
    state = {"Completed": "COMPLETE", "Stopped": "PRUNED", "Failed": "FAIL", "InProgress": "RUNNING"}
    trials = df.rename(columns={"FinalObjectiveValue": "value", "TrainingElapsedTimeSeconds": "duration_s"})
    trials["state"] = trials["TrainingJobStatus"].map(state).fillna("FAIL")
    trials["number"] = range(len(trials))
    trials["epochs_run"] = None
    best_name = t.best_training_job()
    desc = t.sagemaker_session.sagemaker_client.describe_training_job(TrainingJobName=best_name)
    best = {k: coerce(k, _parse_hp(desc["HyperParameters"][k])) for k in SEARCH_SPACE if k in desc["HyperParameters"]}
    best_value = desc["FinalMetricDataList"][0]["Value"] if desc.get("FinalMetricDataList") else float("nan")
    return TuningResult(engine="sagemaker", trials=trials, best_hyperparameters=best, best_value=float(best_value),
                        static=static, wall_s=wall_s, details={"tuning_job": t.latest_tuning_job.name,
                                                               "best_training_job": best_name})


def _parse_hp(value: str) -> Any:
    import json

    try:
        return json.loads(value)
    except ValueError:
        return value


def debugger_service_settings(cfg: RunConfig, inst: Any) -> dict[str, Any]:
    """Estimator arguments for accounts that can use the Debugger service: managed rules, hook, profiler.

    The hook then takes its configuration from the platform (``debughookconfig.json``) and the
    ProfilerReport rule writes ``rule-output/ProfilerReport/profiler-output/profiler-report.html``.
    """
    from sagemaker.debugger import CollectionConfig, DebuggerHookConfig, ProfilerConfig

    from helpers.debugger_rules import sagemaker_rules

    every = {"train.save_interval": str(inst.train_save_interval), "eval.save_interval": str(inst.eval_save_interval)}
    collections = [CollectionConfig(name, every) for name in ("losses", "gradients", "weights", "biases")]
    collections.append(CollectionConfig("relu_input", {**every, "include_regex": ".*relu_input"}))
    collections.append(CollectionConfig("labels", {**every, "include_regex": "^labels$"}))
    collections.append(CollectionConfig("predictions", {**every, "include_regex": "^predictions$"}))
    return {
        "rules": sagemaker_rules(collections),
        "debugger_hook_config": DebuggerHookConfig(s3_output_path=f"{cfg.s3_prefix.rstrip('/')}/debug-output",
                                                   collection_configs=collections),
        "profiler_config": ProfilerConfig(system_monitor_interval_millis=inst.profiler_interval_ms),
    }


def final_training(cfg: RunConfig, data: Mapping[str, Any], *, role: str, hyperparameters: Mapping[str, Any],
                   inst: Any, use_debugger_service: bool = False, instance_type: str = DEFAULT_INSTANCE_TYPE,
                   sagemaker_session: Any = None, wait: bool = True) -> Any:
    """The final training job on train, valid and test, with our hook and profiler writing to its output.

    Without the Debugger service (closed to new customers since 2026-07-30) the job's
    ``output.tar.gz`` carries ``tensors/`` and ``profiler/``, which the local rules analyse.
    """
    sess = sagemaker_session or session(cfg)
    extra = debugger_service_settings(cfg, inst) if use_debugger_service else {"disable_profiler": True}
    est = estimator(cfg, role=role, hyperparameters={**hyperparameters, **inst.hyperparameters()},
                    instance_type=instance_type, sagemaker_session=sess, **extra)
    est.fit(channels(data), wait=wait)
    return est


def download_output(est: Any, dest: str | Path) -> Path:
    """Download and safely extract a finished job's ``output.tar.gz`` (metrics, tensors, profiler files)."""
    import tarfile

    from sagemaker.s3 import S3Downloader

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    job = est.latest_training_job.name
    uri = f"{est.output_path.rstrip('/')}/{job}/output/output.tar.gz"
    S3Downloader.download(uri, str(dest), sagemaker_session=est.sagemaker_session)
    with tarfile.open(dest / "output.tar.gz") as tar:
        tar.extractall(dest / "data", filter="data")  # refuses absolute paths, '..' and links outside
    return dest / "data"


def platform_profiler_report(est: Any, dest: str | Path) -> Path | None:
    """The ProfilerReport rule's own HTML report, when the Debugger service ran it."""
    from sagemaker.s3 import S3Downloader

    base = f"{est.output_path.rstrip('/')}/{est.latest_training_job.name}"
    uri = f"{base}/rule-output/ProfilerReport/profiler-output/profiler-report.html"
    try:
        S3Downloader.download(uri, str(dest), sagemaker_session=est.sagemaker_session)
    except Exception:  # noqa: BLE001 - no report (service not used, or the rule has not finished)
        return None
    return Path(dest) / "profiler-report.html"


def download_model(est: Any, dest: str | Path) -> Path:
    """Download and extract a finished job's ``model.tar.gz`` into ``dest`` (a model folder)."""
    import tarfile

    from sagemaker.s3 import S3Downloader

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    S3Downloader.download(est.model_data, str(dest), sagemaker_session=est.sagemaker_session)
    with tarfile.open(dest / "model.tar.gz") as tar:
        tar.extractall(dest, filter="data")
    return dest
