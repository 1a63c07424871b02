"""Experiment tracking from the entry point: an MLflow run, and TensorBoard event files.

These are what AWS maps SageMaker Debugger and Profiler to: metrics and hyperparameters to MLflow (SageMaker's
managed MLflow on AWS, a SQLite store in the work folder locally), system metrics to MLflow's system metrics,
tensor histograms to TensorBoard.

- **MLflow** is on when ``MLFLOW_TRACKING_URI`` is set in the job's environment: a ``sqlite:///`` or
  ``file:`` store, an ``http(s)://`` server, or a SageMaker MLflow tracking server's ARN (the
  ``sagemaker-mlflow`` plugin signs the requests). ``MLFLOW_EXPERIMENT_NAME`` picks the experiment, and
  ``MLFLOW_PARENT_RUN_ID`` makes the job's run a child of that run (a tuning job's trials). The run is
  named after the training job and tagged with its name, ARN and console address.
- Tracking never stops training. An unreachable or failing server turns tracking off with one
  message, and the job's metric lines, which SageMaker and the tuner read, are printed all the same.
- **TensorBoard** event files go where SageMaker's ``TensorBoardOutputConfig`` uploads from (its
  ``LocalPath``, ``/opt/ml/output/tensorboard`` by default), else into the job's output data.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENV_URI = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT = "MLFLOW_EXPERIMENT_NAME"
ENV_PARENT = "MLFLOW_PARENT_RUN_ID"
DEFAULT_EXPERIMENT = "sagebook"
TAG_JOB = "sagemaker.training_job_name"
TAG_JOB_ARN = "sagemaker.training_job_arn"
TAG_JOB_URL = "sagemaker.training_job_url"
PARENT_TAG = "mlflow.parentRunId"
#: How often MLflow's system metrics are sampled in a job (MLflow's default, 10 s, misses short jobs).
SYSTEM_METRICS_INTERVAL_S = 1.0
TENSORBOARD_CONFIG = "tensorboardoutputconfig.json"  # what SageMaker writes into /opt/ml/input/config
TENSORBOARD_DEFAULT = "/opt/ml/output/tensorboard"
HISTOGRAM_BINS = 64
HISTOGRAM_SAMPLE = 1 << 16  # values binned per tensor, at most


def console_url(job_arn: str) -> str:
    """The training job's page in the SageMaker console, from its ARN (``arn:aws:sagemaker:REGION:...``)."""
    parts = job_arn.split(":")
    region = parts[3] if len(parts) > 5 else "us-east-1"
    name = job_arn.rsplit("/", 1)[-1]
    return f"https://{region}.console.aws.amazon.com/sagemaker/home?region={region}#/jobs/{name}"


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: next to a SQLite store (``artifacts/`` beside the database),
    never MLflow's default ``./mlruns`` in whatever folder the job runs from; a server decides for itself."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()


def _quiet_http_retries() -> None:
    """MLflow retries an HTTP call 7 times with backoff (minutes against a dead server); a job asks twice."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


class MlflowRun:
    """The job's MLflow run, or nothing when tracking is off. Every call is safe: the first failure turns
    tracking off, says so once through ``emit``, and the job goes on."""

    def __init__(self, env: Mapping[str, str], emit: Callable[[str], None] = print) -> None:
        self.uri = env.get(ENV_URI, "")
        self.experiment = env.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT
        self.parent = env.get(ENV_PARENT) or None
        self.job = env.get("TRAINING_JOB_NAME") or f"local-{time.strftime('%Y%m%d-%H%M%S')}"
        self.job_arn = env.get("TRAINING_JOB_ARN", "")
        self.emit = emit
        self.client: Any = None
        self.run_id: str | None = None
        self._monitor: Any = None
        self.off_reason: str | None = None if self.uri else "MLFLOW_TRACKING_URI is not set"

    @property
    def enabled(self) -> bool:
        return self.off_reason is None

    def _off(self, what: str, error: BaseException) -> None:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        self.off_reason = f"{what} failed: {first}"
        self.emit(f"MLflow tracking is off for the rest of this job ({self.off_reason}); training goes on, "
                  "and the metric lines below are complete")
        self._stop_monitor()

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        if not self.enabled:
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - tracking must never fail the training job
            self._off(what, e)
            return None

    def start(self, params: Mapping[str, Any], *, system_metrics: bool = True) -> str | None:
        """Create the run (a child of ``MLFLOW_PARENT_RUN_ID`` when set) with the hyperparameters; its id."""
        if not self.enabled:
            return None

        def start() -> str:
            _quiet_http_retries()
            from mlflow import MlflowClient
            from mlflow.entities import Param

            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(self.experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
                self.experiment, artifact_location=artifact_location(self.uri))
            tags = {TAG_JOB: self.job, "mlflow.source.name": "train.py", "mlflow.source.type": "JOB"}
            if self.job_arn:
                tags |= {TAG_JOB_ARN: self.job_arn, TAG_JOB_URL: console_url(self.job_arn),
                         "mlflow.note.content": f"SageMaker training job [{self.job}]({console_url(self.job_arn)})"}
            if self.parent:
                tags[PARENT_TAG] = self.parent
            run = self.client.create_run(exp_id, run_name=self.job, tags=tags)
            self.run_id = run.info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())])
            return self.run_id

        run_id = self._guard("starting the run", start)
        if run_id and system_metrics:
            self._guard("starting the system metrics", self._start_monitor)
        if run_id:
            self.emit(f"MLflow run {run_id} in experiment {self.experiment!r}" +
                      (f" (child of {self.parent})" if self.parent else ""))
        return run_id

    def _start_monitor(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                                             samples_before_logging=1, tracking_uri=self.uri)
        self._monitor.start()

    def _stop_monitor(self) -> None:
        """Stop the sampler, then log one last sample: MLflow's monitor drops the sample it was taking when
        stopped, so a job shorter than the interval would have none."""
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            try:
                monitor.finish()
                if self.enabled:
                    monitor.collect_metrics()
                    monitor.publish_metrics(monitor.aggregate_metrics())
                    monitor.mlflow_logger.flush()
            except Exception:  # noqa: BLE001 - its last sample is lost, nothing else
                pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        def log_() -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step or 0)
                                                        for k, v in metrics.items() if v is not None])

        if self.run_id:
            self._guard("logging metrics", log_)

    def log_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        """One epoch's train and validation loss and accuracy, at step ``epoch``."""
        self.log_metrics({k: row[k] for k in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy",
                                               "seconds") if k in row}, step=epoch)

    def log_artifacts(self, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        """Files (or folders) that exist among ``paths``, under ``artifact_path`` of the run."""
        def log_() -> None:
            for p in paths:
                if p.is_dir():
                    self.client.log_artifacts(self.run_id, str(p), f"{artifact_path}/{p.name}" if artifact_path
                                              else p.name)
                elif p.is_file():
                    self.client.log_artifact(self.run_id, str(p), artifact_path)

        if self.run_id:
            self._guard("logging artifacts", log_)

    def end(self, status: str = "FINISHED") -> None:
        """End the run: ``FINISHED``, ``FAILED`` or ``KILLED``."""
        self._stop_monitor()
        if self.run_id:
            self._guard("ending the run", lambda: self.client.set_terminated(self.run_id, status))


# --------------------------------------------------------------------------------------------------
# TensorBoard


def tensorboard_dir(env: Mapping[str, str], output_dir: Path, wanted: bool) -> Path | None:
    """Where to write event files: ``TensorBoardOutputConfig.LocalPath`` when the job has one (SageMaker
    writes it to ``input/config/tensorboardoutputconfig.json`` and uploads the folder), else
    ``OUTPUT/tensorboard`` when ``wanted``; None for no TensorBoard."""
    config_dir = env.get("SM_INPUT_CONFIG_DIR")
    config = Path(config_dir) / TENSORBOARD_CONFIG if config_dir else None
    if config is not None and config.is_file():
        try:
            local = json.loads(config.read_text() or "{}").get("LocalPath") or TENSORBOARD_DEFAULT
        except ValueError:
            local = TENSORBOARD_DEFAULT
        return Path(local)
    return output_dir / "tensorboard" if wanted else None


class TensorBoardLog:
    """Scalars per epoch and, from the hook's collections, histograms of weights, biases and gradients."""

    def __init__(self, logdir: Path, module: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        logdir.mkdir(parents=True, exist_ok=True)
        self.logdir = logdir
        self.writer = SummaryWriter(log_dir=str(logdir))
        self.module = module

    def epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        for split in ("train", "valid"):
            for metric in ("loss", "accuracy"):
                if f"{split}_{metric}" in row:
                    self.writer.add_scalar(f"{metric}/{split}", row[f"{split}_{metric}"], epoch)
        self.histograms(epoch)
        self.writer.flush()

    def histograms(self, step: int) -> None:
        """``weights/NAME``, ``biases/NAME`` and ``gradients/NAME`` (the last step's) of every trained parameter."""
        for name, p in self.module.named_parameters():
            if not p.requires_grad:
                continue
            kind = "biases" if name.endswith("bias") else "weights"
            self.histogram(f"{kind}/{name}", p.detach(), step)
            if p.grad is not None:
                self.histogram(f"gradients/{name}", p.grad.detach(), step)

    def histogram(self, tag: str, values: Any, step: int, bins: int = HISTOGRAM_BINS) -> None:
        """One histogram, binned by ``torch.histc`` (``add_histogram`` goes through NumPy with ~800 buckets: 1.1 s
        an epoch for resnet18's weights and gradients on 2 cores). Counts of a tensor larger than
        :data:`HISTOGRAM_SAMPLE` come from an even subsample, scaled; min, max, sum and count are exact."""
        import torch

        v = values.float().flatten()
        lo, hi = v.min().item(), v.max().item()
        sample = v[:: max(1, v.numel() // HISTOGRAM_SAMPLE)]
        if hi > lo:
            counts = torch.histc(sample, bins=bins, min=lo, max=hi) * (v.numel() / sample.numel())
            limits = torch.linspace(lo, hi, bins + 1)[1:].tolist()
        else:
            counts, limits = torch.tensor([float(v.numel())]), [hi]
        self.writer.add_histogram_raw(tag, min=lo, max=hi, num=v.numel(), sum=v.sum().item(),
                                      sum_squares=v.dot(v).item(), bucket_limits=limits,
                                      bucket_counts=counts.tolist(), global_step=step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for k, v in values.items():
            if v is not None:
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()
