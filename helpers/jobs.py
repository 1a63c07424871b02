"""Local training jobs: SageMaker "local mode" without Docker.

A job runs the staged ``source_dir`` entry point in a subprocess with the environment a SageMaker
training container sets (``SM_CHANNEL_*``, ``SM_MODEL_DIR``, ``SM_OUTPUT_DATA_DIR``, ``SM_HPS``,
``SM_HOSTS`` ...) and a job folder::

    jobs/NAME/
      source/          the staged source_dir (train.py + helpers + requirements.txt)
      model/           SM_MODEL_DIR: model.pth, model_config.json, code/
      output/data/     SM_OUTPUT_DATA_DIR: metrics.json and anything else the script writes
      checkpoints/     SM_CHECKPOINT_DIR: rerunning a job with the same name resumes from here
      train.log        the whole log
      job.json         status, metrics, hyperparameters, duration, failure reason

The log is streamed while the job runs and parsed with the same regexes as the SageMaker
``metric_definitions``. A failing script fails the job with the tail of its log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from helpers.runtime.fileio import atomic_write_json
from helpers.runtime.metrics import parse_line
from helpers.packaging import stage_source_dir
from helpers.serving import free_port

log = logging.getLogger(__name__)

LOG_TAIL = 40


class JobFailed(RuntimeError):
    """The training script failed; the message carries the tail of its log."""

    def __init__(self, message: str, result: "JobResult") -> None:
        super().__init__(message)
        self.result = result


@dataclass
class JobResult:
    name: str
    status: str
    job_dir: str
    hyperparameters: dict[str, Any]
    channels: dict[str, str]
    instance_count: int = 1
    metrics: dict[str, list[float]] = field(default_factory=dict)
    started: str = ""
    duration_s: float = 0.0
    exit_code: int | None = None
    failure_reason: str = ""

    @property
    def model_dir(self) -> Path:
        return Path(self.job_dir) / "model"

    @property
    def output_dir(self) -> Path:
        return Path(self.job_dir) / "output" / "data"

    def final(self, metric: str) -> float | None:
        """The last value of a metric, as SageMaker reports a job's final metrics."""
        values = self.metrics.get(metric)
        return values[-1] if values else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, job_dir: str | os.PathLike[str]) -> "JobResult":
        return cls(**json.loads((Path(job_dir) / "job.json").read_text()))


def job_name(prefix: str, hyperparameters: Mapping[str, Any]) -> str:
    """``prefix-<hash>``: the same hyperparameters give the same job (a rerun resumes it), others a new one."""
    digest = hashlib.sha256(json.dumps(dict(hyperparameters), sort_keys=True, default=str).encode()).hexdigest()
    return f"{prefix}-{digest[:10]}"


def hyperparameter_args(hyperparameters: Mapping[str, Any]) -> list[str]:
    """``{"lr": 0.01}`` -> ``["--lr", "0.01"]``, the way SageMaker passes hyperparameters to the script."""
    args = []
    for k, v in hyperparameters.items():
        args += [f"--{k}", json.dumps(v) if isinstance(v, (dict, list)) else str(v)]
    return args


def sm_environment(job_dir: Path, channels: Mapping[str, str | os.PathLike[str]], hyperparameters: Mapping[str, Any],
                   instance_count: int = 1) -> dict[str, str]:
    """The SM_* variables a SageMaker PyTorch training container sets, pointing into ``job_dir``."""
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    hosts = ["algo-1"]
    env = {
        "SM_MODEL_DIR": str(job_dir / "model"),
        "SM_OUTPUT_DATA_DIR": str(job_dir / "output" / "data"),
        "SM_OUTPUT_DIR": str(job_dir / "output"),
        "SM_CHECKPOINT_DIR": str(job_dir / "checkpoints"),
        "SM_CHANNELS": json.dumps(sorted(channels)),
        "SM_HPS": json.dumps(dict(hyperparameters)),
        "SM_HOSTS": json.dumps(hosts),
        "SM_CURRENT_HOST": hosts[0],
        "SM_NUM_GPUS": str(gpus),
        "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "SM_USER_ARGS": json.dumps(hyperparameter_args(hyperparameters)),
        "SM_TRAINING_ENV": json.dumps({"job_name": job_dir.name, "hosts": hosts, "current_host": hosts[0],
                                       "num_gpus": gpus, "hyperparameters": dict(hyperparameters),
                                       "channel_input_dirs": {k: str(v) for k, v in channels.items()},
                                       "instance_count": instance_count}),
    }
    for name, path in channels.items():
        env[f"SM_CHANNEL_{name.upper()}"] = str(path)
    return env


def run_local_job(
    name: str,
    *,
    hyperparameters: Mapping[str, Any],
    channels: Mapping[str, str | os.PathLike[str]],
    jobs_dir: str | os.PathLike[str],
    instance_count: int = 1,
    echo: Callable[[str], None] | None = print,
    on_metric: Callable[[str, float], None] | None = None,
    timeout_s: float | None = None,
    extra_env: Mapping[str, str] | None = None,
    rerun: bool = False,
) -> JobResult:
    """Run the training entry point as SageMaker would and record the job; raise :class:`JobFailed` on failure.

    ``instance_count > 1`` starts that many processes with ``torchrun`` (gloo on CPU), like
    ``distribution={"torch_distributed": {"enabled": True}}`` does across instances.
    Rerunning a job with the same name resumes from its checkpoints; a job that already completed
    with the same hyperparameters and channels is returned as it is, unless ``rerun``.
    """
    job_dir = Path(jobs_dir) / name
    if not rerun and (job_dir / "job.json").is_file():
        done = JobResult.load(job_dir)
        if (done.status == "Completed" and done.hyperparameters == dict(hyperparameters)
                and done.channels == {k: str(v) for k, v in channels.items()}):
            log.info("job %s already completed; reusing its results", name)
            return done
    for sub in ("model", "output/data", "checkpoints"):
        (job_dir / sub).mkdir(parents=True, exist_ok=True)
    missing = [f"{k}={v}" for k, v in channels.items() if not Path(v).is_dir()]
    if missing:
        raise FileNotFoundError(f"Channel folder(s) not found: {', '.join(missing)}")
    source = stage_source_dir(job_dir / "source")
    result = JobResult(name=name, status="InProgress", job_dir=str(job_dir), hyperparameters=dict(hyperparameters),
                       channels={k: str(v) for k, v in channels.items()}, instance_count=instance_count,
                       started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    atomic_write_json(job_dir / "job.json", result.to_dict())

    env = {**os.environ, **sm_environment(job_dir, channels, hyperparameters, instance_count),
           "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("PYTHONPATH", None)  # the job sees only its source_dir, as in the container
    script = ["train.py", *hyperparameter_args(hyperparameters)]
    if instance_count > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
               str(instance_count), "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *script]
    else:
        cmd = [sys.executable, *script]
    log.info("job %s: %s", name, " ".join(cmd))
    tail: deque[str] = deque(maxlen=LOG_TAIL)
    start = time.perf_counter()
    with open(job_dir / "train.log", "a", encoding="utf-8") as logf:
        logf.write(f"==== {result.started} {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=source, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, errors="replace")
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                logf.write(line)
                line = line.rstrip("\n")
                tail.append(line)
                for metric, value in parse_line(line).items():
                    result.metrics.setdefault(metric, []).append(value)
                    if on_metric is not None:
                        on_metric(metric, value)
                if echo is not None:
                    echo(line)
                if timeout_s is not None and time.perf_counter() - start > timeout_s:
                    proc.kill()
                    tail.append(f"(stopped: the job ran past its limit of {timeout_s:.0f} s)")
                    break
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            result.status, result.failure_reason = "Stopped", "interrupted"
            result.duration_s = time.perf_counter() - start
            atomic_write_json(job_dir / "job.json", result.to_dict())
            raise
    result.duration_s = time.perf_counter() - start
    result.exit_code = proc.returncode
    if proc.returncode == 0:
        result.status = "Completed"
    else:
        result.status = "Failed"
        result.failure_reason = "\n".join(tail)
    atomic_write_json(job_dir / "job.json", result.to_dict())
    if result.status == "Failed":
        raise JobFailed(f"Training job {name} failed (exit code {proc.returncode}). Last lines of its log "
                        f"({job_dir / 'train.log'}):\n" + result.failure_reason, result)
    return result
