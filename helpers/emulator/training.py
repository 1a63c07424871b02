"""Training jobs on the local SageMaker: the entry point runs the way the PyTorch training container runs it.

Two contracts, as the service supports them:

- **Framework container** (SDK v2, the AWS CLI examples): the hyperparameters ``sagemaker_program`` and
  ``sagemaker_submit_directory`` (a ``sourcedir.tar.gz`` in S3, or a ``file://`` folder) name the
  script. As the sagemaker-training toolkit does, each hyperparameter is JSON-decoded, the
  ``sagemaker_*`` keys are dropped, and the rest reach the script as ``--key str(value)``, sorted.
- **SDK v3 ModelTrainer**: ``code`` and ``sm_drivers`` channels, with ``ContainerEntrypoint`` replacing the
  container's own; ``sm_drivers/sourcecode.json`` names the entry script (or a command). As the SDK's
  basic driver does, the script gets ``--key value`` in the request's order, strings as they are and
  other values JSON-encoded. A tuning job cannot set ``ContainerEntrypoint``, so v3's tuning trials,
  which carry ``sm_drivers`` and ``sagemaker_program`` both, take the framework container's path.

A job's folder, ``<work>/emulator/training/NAME/``, is the container's ``/opt/ml``: ``input/config/``
(``hyperparameters.json``, ``inputdataconfig.json``, ``resourceconfig.json``), ``input/data/CHANNEL``,
``code/``, ``model/``, ``output/data/``, ``output/failure``, ``checkpoints/``, plus ``job.log`` and
``job.json`` (the job's record, kept as it runs; a local SageMaker starting on the same work folder marks
the jobs a killed one left running as Failed there, and empties the folders of the jobs that had ended, all
but their record and log, as the service releases a job's instance).

Where it differs from the container, on purpose:

- Paths: ``/opt/ml`` is the job folder, and every ``SM_*`` path points into it. ``SAGEMAKER_BASE_DIR``
  and ``SM_CHECKPOINT_DIR`` say where it is; a script that hard-codes ``/opt/ml`` runs on the service only.
- The interpreter is this one, as started with ``-E -s`` (no ``PYTHON*`` variables, no user site-packages)
  in the extracted code folder, so a module missing from what was shipped fails here as it would
  there. A Python script is forked from a warm interpreter that imported numpy, PIL, torch and
  torchvision once (:mod:`helpers.emulator.warm`): the container has them installed, and importing
  them took longer than a tuning trial's training. ``requirements.txt`` is compared with what is
  installed, not installed.
- Jobs that run at once share this machine's cores: each gets ``OMP_NUM_THREADS`` = cores / running
  jobs (unless its ``Environment`` sets it), where an instance would have its own.
- ``model.tar.gz`` and ``output.tar.gz`` are gzip level 0 (stored): valid archives, written fast.
- One machine: ``InstanceCount`` N runs N processes under torchrun here (``algo-1`` ... ``algo-N``).
- Managed spot training (``EnableManagedSpotTraining``): capacity is never reclaimed here by itself;
  :meth:`TrainingJobs.interrupt` (``POST /_local/training-jobs/NAME/interrupt``) reclaims it as the
  service would. The job's process gets SIGTERM, its checkpoints are synced to ``CheckpointConfig``,
  the secondary status goes ``Interrupted`` then ``Restarting``, and the job starts again under its
  name on a clean ``/opt/ml`` with the checkpoints restored. ``BillableTimeInSeconds`` of a spot job is
  :data:`SPOT_BILLED_FRACTION` of its training seconds (the service's savings vary, up to 90%).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from helpers.emulator import reaper, storage
from helpers.emulator.server import ACCOUNT_ID, AwsError, validation_error
from helpers.runtime.fileio import atomic_write_json

log = logging.getLogger(__name__)

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
LOG_TAIL = 40
POLL_S = 0.25
READER_GRACE_S = 10.0  # how long the job's end waits for the rest of its output
CHECKPOINT_SYNC_S = 2.0
#: Fork Python jobs from a warm interpreter (:mod:`helpers.emulator.warm`); ``SAGEBOOK_EMULATOR_WARM=0``: no.
WARM = os.environ.get("SAGEBOOK_EMULATOR_WARM", "1") != "0"
FAILURE_REASON_MAX = 1024  # the API's length limit for FailureReason
#: A spot job's billed share of its training seconds, here; the service's depends on the spot price.
SPOT_BILLED_FRACTION = 0.3

MetricCallback = Callable[[str, float], None]


class ClientError(Exception):
    """A job that fails before its script runs, for a reason on the caller's side (as the service says it)."""


def now() -> datetime:
    return datetime.now(timezone.utc)


# --------------------------------------------------------------------------------------------------
# Pure functions: hyperparameters as each contract delivers them


def json_or_str(value: Any) -> Any:
    """A hyperparameter value as the container decodes it: JSON when it parses, else the string itself."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def toolkit_hyperparameters(raw: Mapping[str, str]) -> dict[str, Any]:
    """The framework container's user hyperparameters: JSON-decoded, ``sagemaker_*`` keys dropped."""
    return {k: json_or_str(v) for k, v in raw.items() if not k.startswith("sagemaker_")}


def toolkit_args(hps: Mapping[str, Any]) -> list[str]:
    """sagemaker-training's ``to_cmd_args``: sorted keys, ``--key`` (``-k`` for one letter), ``str(value)``.

    So ``true`` in the request reaches the script as ``True``, and a dict as ``k1=v1,k2=v2``.
    """
    args: list[str] = []
    for key in sorted(hps):
        value = hps[key]
        args.append(f"--{key}" if len(key) > 1 else f"-{key}")
        if hasattr(value, "items"):
            args.append(",".join(f"{k}={v}" for k, v in sorted(value.items())))
        else:
            args.append("" if value is None else str(value))
    return args


def driver_args(hps: Mapping[str, Any]) -> list[str]:
    """The SDK v3 basic driver's ``hyperparameters_to_cli_args``: request order, non-strings JSON-encoded."""
    args: list[str] = []
    for key, value in hps.items():
        value = json_or_str(value)
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args


def metric_regexes(definitions: list[Mapping[str, str]] | None) -> list[tuple[str, re.Pattern[str]]]:
    return [(d["Name"], re.compile(d["Regex"])) for d in definitions or []]


def parse_metrics(line: str, regexes: list[tuple[str, re.Pattern[str]]]) -> list[tuple[str, float]]:
    """The metric values a log line carries, as the service reads them: the first group of each regex."""
    found = []
    for name, rx in regexes:
        m = rx.search(line)
        if m and m.groups():
            try:
                found.append((name, float(m.group(1))))
            except (TypeError, ValueError):
                pass
    return found


def last_error_line(lines: list[str]) -> str:
    """The line that says what went wrong: the last ``...Error: ...``/``...Exception...`` line, else the last line."""
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line.strip()):
            return line.strip()
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def failure_reason(exit_code: int, lines: list[str], command: list[str], failure_file: Path) -> str:
    """``FailureReason`` as the service words it: the script's own failure file, else the toolkit's summary."""
    if failure_file.is_file() and failure_file.read_text(errors="replace").strip():
        text = failure_file.read_text(errors="replace").strip()
    else:
        text = (f'AlgorithmError: ExecuteUserScriptError:\nExitCode {exit_code}\nErrorMessage '
                f'"{last_error_line(lines)}"\nCommand "{shlex.join(command)}"')
    return text[:FAILURE_REASON_MAX]


@lru_cache(maxsize=1)
def gpu_count() -> int:
    """GPUs on this machine, counted as the container counts them (``nvidia-smi --list-gpus``)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


# --------------------------------------------------------------------------------------------------
# Jobs


@dataclass
class _Run:
    name: str
    region: str
    job: Any  # moto's FakeTrainingJob: what Describe/List report
    params: dict[str, Any]
    root: Path
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: str = "Stopped"  # the secondary status a stop ends in: Stopped or MaxRuntimeExceeded
    done: threading.Event = field(default_factory=threading.Event)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    on_metric: MetricCallback | None = None
    thread: threading.Thread | None = None
    peers: int = 1  # jobs expected to run alongside, this one included (a tuning job's parallel trials)
    interrupt: threading.Event = field(default_factory=threading.Event)  # spot capacity reclaimed
    interruptions: int = 0
    trained_s: float = 0.0  # seconds the job's processes ran, over every start


class TrainingJobs:
    """CreateTrainingJob, DescribeTrainingJob and StopTrainingJob, executed; moto stores and lists the jobs."""

    def __init__(self, root: Path, *, stop_grace_s: float = 120.0) -> None:
        self.root = Path(root)
        self.stop_grace_s = stop_grace_s
        self.runs: dict[tuple[str, str], _Run] = {}
        self._lock = threading.Lock()
        self._zygote: Any = None
        abandoned = mark_abandoned(self.root)
        for name in abandoned:
            log.warning("training job %s was still running when the local SageMaker before this one stopped: its "
                        "job.json now says Failed", name)
        release_instances(self.root, keep=abandoned)

    def handlers(self) -> dict[str, Callable[[dict[str, Any], str], dict[str, Any]]]:
        return {"CreateTrainingJob": lambda p, r: self.create(p, r), "DescribeTrainingJob": self.describe,
                "StopTrainingJob": self.stop}

    @staticmethod
    def backend(region: str) -> Any:
        from moto.sagemaker.models import sagemaker_backends

        return sagemaker_backends[ACCOUNT_ID][region]

    # -- API -------------------------------------------------------------------------------------
    def create(self, params: dict[str, Any], region: str, on_metric: MetricCallback | None = None,
               peers: int = 1) -> dict[str, Any]:
        name = params["TrainingJobName"]
        backend = self.backend(region)
        with self._lock:
            if name in backend.training_jobs:
                raise AwsError("ResourceInUse", "Training job names must be unique within an AWS account and "
                               f"region, and a training job with this name already exists "
                               f"({backend.training_jobs[name].arn})")
            original = copy.deepcopy(params)
            params = copy.deepcopy(params)  # moto changes what it is given (its metric definitions)
            job = backend.create_training_job(
                training_job_name=name, hyper_parameters=params.get("HyperParameters") or {},
                algorithm_specification=params["AlgorithmSpecification"], role_arn=params["RoleArn"],
                input_data_config=params.get("InputDataConfig") or [], output_data_config=params["OutputDataConfig"],
                resource_config=params["ResourceConfig"], vpc_config=params.get("VpcConfig"),
                stopping_condition=params["StoppingCondition"], tags=params.get("Tags"),
                enable_network_isolation=params.get("EnableNetworkIsolation", False),
                enable_inter_container_traffic_encryption=params.get("EnableInterContainerTrafficEncryption", False),
                enable_managed_spot_training=params.get("EnableManagedSpotTraining", False),
                checkpoint_config=params.get("CheckpointConfig"), debug_hook_config=params.get("DebugHookConfig"),
                debug_rule_configurations=params.get("DebugRuleConfigurations"),
                tensor_board_output_config=params.get("TensorBoardOutputConfig"),
                experiment_config=params.get("ExperimentConfig"))
            # moto marks a job Completed at once and replaces its metric definitions: undo both.
            job.algorithm_specification = copy.deepcopy(original["AlgorithmSpecification"])
            job.environment = original.get("Environment")
            job.creation_time = job.last_modified_time = now()
            job.training_job_status, job.secondary_status = "InProgress", "Starting"
            job.secondary_status_transitions = []
            job.final_metric_data_list = None
            job.training_start_time = job.training_end_time = None
            job.model_artifacts = None
            run = _Run(name=name, region=region, job=job, params=original, root=self.root / name, on_metric=on_metric,
                       peers=peers)
            self.runs[(region, name)] = run
        self._transition(run, "Starting", "Launching requested ML instances")
        run.thread = threading.Thread(target=self._execute, args=(run,), name=f"training-{name}", daemon=True)
        run.thread.start()
        return {"TrainingJobArn": job.arn}

    def describe(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        backend = self.backend(region)
        name = params["TrainingJobName"]
        job = backend.training_jobs.get(name)
        if job is None:
            raise validation_error(f"Requested resource not found. Could not find training job "
                                   f"'arn:aws:sagemaker:{region}:{ACCOUNT_ID}:training-job/{name}'.")
        return {k: v for k, v in job.response_object.items() if v is not None}

    def stop(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        name = params["TrainingJobName"]
        run = self.runs.get((region, name))
        if run is None:
            self.describe(params, region)  # not found: the service's error
            raise validation_error(f"The training job {name} is not in progress.")
        if run.job.training_job_status != "InProgress":
            raise validation_error(f"The request was rejected because the training job is in status "
                                   f"{run.job.training_job_status}.")
        run.job.training_job_status = "Stopping"
        self._transition(run, "Stopping", "Stopping the training job")
        run.stop.set()
        return {}

    def interrupt(self, name: str, region: str) -> dict[str, Any]:
        """Reclaim a running managed spot job's capacity, as the service may at any time (not an AWS API)."""
        run = self.runs.get((region, name))
        if run is None:
            raise validation_error(f"Requested resource not found. Could not find training job '{name}'.")
        if not run.params.get("EnableManagedSpotTraining"):
            raise validation_error(f"Training job {name} does not use managed spot training: only spot capacity "
                                   "is reclaimed.")
        if run.job.training_job_status != "InProgress" or run.job.secondary_status != "Training":
            raise validation_error(f"Training job {name} is not training (it is {run.job.secondary_status}).")
        run.interrupt.set()
        return {"TrainingJobName": name, "Interruptions": run.interruptions + 1}

    def routes(self) -> list[Any]:
        """The local-only ``POST /_local/training-jobs/NAME/interrupt`` (unsigned: any HTTP client)."""
        from helpers.emulator.server import Route

        def interrupt(request: Any) -> tuple[int, dict[str, str], bytes]:
            from urllib.parse import parse_qs

            region = parse_qs(request.environ.get("QUERY_STRING", "")).get("region", [request.region])[0]
            answer = self.interrupt(request.match.group(1), region)
            return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()

        return [Route("", "POST", re.compile(r"^/_local/training-jobs/([^/]+)/interrupt$"), interrupt)]

    def wait(self, name: str, region: str, timeout: float | None = None) -> str:
        """Block until the job ends; its final status."""
        run = self.runs[(region, name)]
        run.done.wait(timeout)
        return run.job.training_job_status

    def shutdown(self) -> None:
        """Stop every job still running and wait for them (their processes are ended)."""
        for run in list(self.runs.values()):
            if not run.done.is_set():
                run.stop.set()
        for run in list(self.runs.values()):
            if run.thread is not None:
                run.thread.join(timeout=self.stop_grace_s + 30)
        if self._zygote is not None:
            self._zygote.stop()
            self._zygote = None

    # -- the job ---------------------------------------------------------------------------------
    def _transition(self, run: _Run, status: str, message: str) -> None:
        t = now()
        transitions = run.job.secondary_status_transitions
        if transitions and transitions[-1]["Status"] == status:
            return
        if transitions:
            transitions[-1]["EndTime"] = t
        transitions.append({"Status": status, "StartTime": t, "StatusMessage": message})
        run.job.secondary_status = status
        run.job.last_modified_time = t
        _record(run)

    def _execute(self, run: _Run) -> None:
        job, params = run.job, run.params
        exit_code: int | None = None
        reason = ""
        try:
            layout = _prepare_layout(run.root)
            self._transition(run, "Downloading", "Downloading input data")
            channels = _fetch_channels(params.get("InputDataConfig") or [], layout["data"])
            ckpt = params.get("CheckpointConfig") or {}
            if ckpt.get("S3Uri"):
                storage.download_prefix(ckpt["S3Uri"], layout["checkpoints"])
            _write_config(params, layout, channels)
            command, cwd, env = _container_command(params, run.name, job.arn, layout, channels)
            if "OMP_NUM_THREADS" not in (params.get("Environment") or {}):
                env["OMP_NUM_THREADS"] = str(self._cpu_share(run.peers))
            if self._forks(command):  # the first job starts the warm interpreter: like the container's start, it
                self.warm_interpreter().available()  # happens before training, and is not training time
            self._transition(run, "Training", "Training image download completed. Training in progress.")
            job.training_start_time = now()
            while not run.stop.is_set():
                exit_code, lines = self._supervise(run, command, cwd, env, layout, ckpt.get("S3Uri"))
                if not run.interrupt.is_set() or run.stop.is_set():
                    break
                self._restart_after_interruption(run, layout, ckpt.get("S3Uri"))
            if exit_code is not None and exit_code != 0 and not run.stop.is_set():
                reason = failure_reason(exit_code, lines, command, layout["output"] / "failure")
            self._transition(run, "Uploading", "Uploading generated training model")
            if exit_code == 0 or run.stop.is_set():
                _upload_artifacts(params, run.name, layout)
                job.model_artifacts = {"S3ModelArtifacts": _output_uri(params, run.name, "model.tar.gz")}
        except ClientError as e:
            reason = f"ClientError: {e}"
        except AwsError as e:
            reason = f"ClientError: {e.message}"
        except Exception as e:  # noqa: BLE001 - the job fails; the emulator goes on
            log.exception("training job %s", run.name)
            reason = f"InternalServerError: {type(e).__name__}: {e}"
        finally:
            end = now()
            if run.stop.is_set():
                status, secondary = "Stopped", run.stop_reason
            elif reason:
                status, secondary = "Failed", "Failed"
                job.failure_reason = reason[:FAILURE_REASON_MAX]
            else:
                status, secondary = "Completed", "Completed"
            if run.metrics:
                job.final_metric_data_list = [{"MetricName": n, "Value": v[-1], "Timestamp": end}
                                              for n, v in run.metrics.items()]
            job.training_end_time = end
            started = job.training_start_time or end
            job.training_time_in_seconds = max(1, round((end - started).total_seconds()))
            job.billable_time_in_seconds = (max(1, round(run.trained_s * SPOT_BILLED_FRACTION))
                                            if params.get("EnableManagedSpotTraining") else job.training_time_in_seconds)
            self._transition(run, secondary, {"Completed": "Training job completed",
                                              "Failed": "Training job failed",
                                              "MaxRuntimeExceeded": "Job stopped: it ran past MaxRuntimeInSeconds",
                                              }.get(secondary, "Training job stopped"))
            job.training_job_status = status
            _record(run)
            run.done.set()

    def _restart_after_interruption(self, run: _Run, layout: dict[str, Path], checkpoint_uri: str | None) -> None:
        """A new instance after a spot interruption: a clean /opt/ml with the data, code and checkpoints."""
        run.interrupt.clear()
        run.interruptions += 1
        self._transition(run, "Interrupted", "The job was interrupted: its spot capacity was reclaimed")
        self._transition(run, "Restarting", "Restarting the job from its last checkpoint on new capacity")
        for folder in ("model", "output", "checkpoints"):
            shutil.rmtree(layout[folder], ignore_errors=True)
            layout[folder].mkdir(parents=True)
        (layout["output"] / "data").mkdir(parents=True, exist_ok=True)
        if checkpoint_uri:
            storage.download_prefix(checkpoint_uri, layout["checkpoints"])
        self._transition(run, "Training", "Training image download completed. Training in progress.")

    def _cpu_share(self, peers: int = 1) -> int:
        """Threads for a job starting now: on the service each job has its instance's cores; here jobs running
        at once share this machine's, and two PyTorch jobs with a thread per core each run several times slower
        than with half the threads (their threads spin waiting for cores). ``peers``: the jobs expected to run
        alongside it (a tuning job's parallel trials start a moment apart)."""
        running = sum(1 for r in self.runs.values() if not r.done.is_set())
        return max(1, (os.cpu_count() or 1) // max(1, running, peers))

    def warm_interpreter(self) -> Any:
        """The warm interpreter Python jobs fork from, started on first use."""
        with self._lock:
            if self._zygote is None:
                from helpers.emulator.warm import Zygote

                self._zygote = Zygote().start()
            return self._zygote

    @staticmethod
    def _forks(command: list[str]) -> bool:
        """Whether the job's process is forked from the warm interpreter: a Python script, run plainly."""
        plain = _python()
        script = command[len(plain):]
        return command[:len(plain)] == plain and bool(script) and not script[0].startswith("-") and WARM

    def _start(self, command: list[str], cwd: Path, env: dict[str, str]) -> Any:
        """The job's process: forked from the warm interpreter when it runs a Python script, else a new one."""
        plain = _python()
        script = command[len(plain):]
        if self._forks(command):
            zygote = self.warm_interpreter()
            if zygote.available():
                return reaper.adopt(zygote.spawn(script, cwd, env))
            log.warning("the warm interpreter is not available: starting a new one per job")
        return reaper.adopt(subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace",
                                             start_new_session=True))

    def _supervise(self, run: _Run, command: list[str], cwd: Path, env: dict[str, str], layout: dict[str, Path],
                   checkpoint_uri: str | None) -> tuple[int, list[str]]:
        """Run the container's command; stream its log and metrics; honour stops, the runtime limit, checkpoints."""
        stream = storage.LogStream(run.region, LOG_GROUP, f"{run.name}/algo-1-{int(time.time())}")
        regexes = metric_regexes(run.job.algorithm_specification.get("MetricDefinitions"))
        tail: deque[str] = deque(maxlen=LOG_TAIL)
        max_runtime = (run.params.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
        logf = open(layout["root"] / JOB_LOG, "a", encoding="utf-8")
        logf.write(f"==== {now().isoformat(timespec='seconds')} {shlex.join(command)}\n")
        proc = self._start(command, cwd, env)

        def read() -> None:
            assert proc.stdout is not None
            try:
                for raw in proc.stdout:
                    line = raw.rstrip("\n")
                    logf.write(raw)
                    logf.flush()  # job.log follows the job as it runs
                    stream.write(line)
                    tail.append(line)
                    for metric, value in parse_metrics(line, regexes):
                        run.metrics.setdefault(metric, []).append(value)
                        if run.on_metric is not None:
                            run.on_metric(metric, value)
            finally:  # lines read after the job's end was recorded still reach CloudWatch Logs and job.log
                stream.flush()
                logf.close()

        reader = threading.Thread(target=read, name=f"log-{run.name}", daemon=True)
        reader.start()
        started, synced, seen = time.monotonic(), time.monotonic(), {}  # type: ignore[var-annotated]
        tb_dir, tb_uri = tensorboard_local_path(run.params, layout["root"]), tensorboard_uri(run.params, run.name)
        tb_seen: dict[str, float] = {}
        try:
            while proc.poll() is None:
                if max_runtime and run.trained_s + time.monotonic() - started > max_runtime and not run.stop.is_set():
                    run.stop_reason = "MaxRuntimeExceeded"
                    run.job.training_job_status = "Stopping"
                    self._transition(run, "Stopping", "Stopping the job: it ran past MaxRuntimeInSeconds")
                    run.stop.set()
                if run.stop.is_set() or run.interrupt.is_set():  # a spot interruption gives a notice too
                    _terminate(proc, self.stop_grace_s)
                    break
                if time.monotonic() - synced > CHECKPOINT_SYNC_S:  # the service uploads both as the job runs
                    if checkpoint_uri:
                        storage.sync_up(layout["checkpoints"], checkpoint_uri, seen)
                    if tb_uri and tb_dir is not None and tb_dir.is_dir():
                        storage.sync_up(tb_dir, tb_uri, tb_seen)
                    synced = time.monotonic()
                try:
                    proc.wait(timeout=POLL_S)  # returns as soon as the script ends
                except subprocess.TimeoutExpired:
                    pass
            proc.wait()
        finally:
            run.trained_s += time.monotonic() - started
            if proc.poll() is None:
                _terminate(proc, 0)
            reader.join(timeout=READER_GRACE_S)
            if reader.is_alive():  # a process the job started still holds its stdout open
                log.warning("training job %s: its output was still open %.0f s after it ended", run.name,
                            READER_GRACE_S)
            stream.flush()
            if checkpoint_uri:
                storage.sync_up(layout["checkpoints"], checkpoint_uri, seen)
            if tb_uri and tb_dir is not None and tb_dir.is_dir():
                storage.sync_up(tb_dir, tb_uri, tb_seen)
        return proc.returncode, list(tail)


def _terminate(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the job's process group, SIGKILL after ``grace_s`` (the service waits 120 s)."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            try:
                os.kill(proc.pid, sig)  # not (yet) a group leader
            except ProcessLookupError:
                return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


#: Each job folder's record of the job (``job.json``), kept as it runs: what is left of the job when the local
#: SageMaker that ran it is killed (the service keeps its records; this one keeps them in memory).
JOB_RECORD = "job.json"
#: The job's log as it ran (what CloudWatch Logs got too); kept with the record when its instance is released.
JOB_LOG = "job.log"
ABANDONED = ("The local SageMaker running this job stopped before the job ended (it was killed, or the machine "
             "stopped); the job's processes ended with it.")


def _record(run: _Run) -> None:
    """Write the job's ``job.json``: its status, transitions, failure reason and every metric value so far
    (over every start of a spot job, so the epochs before a restart are in it)."""
    job = run.job
    record = {"TrainingJobName": run.name, "TrainingJobStatus": job.training_job_status,
              "SecondaryStatus": job.secondary_status, "FailureReason": getattr(job, "failure_reason", None),
              "SecondaryStatusTransitions": [{k: v.isoformat() if isinstance(v, datetime) else v for k, v in t.items()}
                                             for t in job.secondary_status_transitions],
              "Interruptions": run.interruptions, "Metrics": run.metrics}
    try:
        run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.root / JOB_RECORD, record)
    except OSError as e:  # the record helps after a crash; the job goes on without it
        log.warning("training job %s: could not write %s: %s", run.name, JOB_RECORD, e)


def mark_abandoned(root: Path) -> list[str]:
    """Jobs whose ``job.json`` says they were still running, left by a local SageMaker that was killed: their
    record now ends in a final state, Failed, saying why. Returns their names."""
    names = []
    for path in sorted(Path(root).glob(f"*/{JOB_RECORD}")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("TrainingJobStatus") in ("InProgress", "Stopping"):
            record.update(TrainingJobStatus="Failed", SecondaryStatus="Failed", FailureReason=ABANDONED)
            atomic_write_json(path, record)
            names.append(record.get("TrainingJobName", path.parent.name))
    return names


#: Where :func:`release_instances` moves what it releases, then deletes it in the background.
RELEASED = ".released"


def release_instances(root: Path, keep: Sequence[str] = ()) -> int:
    """What earlier local SageMakers' jobs left on their "instances" goes (input copies, restored checkpoints, model
    and output folders: 800 MB a book run), as the service releases a job's instance when it ends; each job's
    record (``job.json``) and ``job.log`` stay. The jobs in ``keep`` (those a killed one left running) keep all:
    their checkpoints may be the only copy of the work. Returns how many folders were released.

    The folders are moved aside at once (a rename) and deleted by a background thread: deleting them took seconds,
    and a new local SageMaker answers no request until this returns."""
    root = Path(root)
    trash = root / RELEASED / f"{os.getpid()}-{time.time_ns()}"
    released = 0
    for path in sorted(root.glob(f"*/{JOB_RECORD}")):
        folder = path.parent
        if folder.name in keep:
            continue
        extra = [c for c in folder.iterdir() if c.name not in (JOB_RECORD, JOB_LOG)]
        if extra:
            (trash / folder.name).mkdir(parents=True)
            for child in extra:
                child.rename(trash / folder.name / child.name)
            released += 1
    if (root / RELEASED).is_dir():  # this start's, and any a killed one left half deleted
        threading.Thread(target=_delete_quietly, args=(root / RELEASED,), name="release-instances",
                         daemon=True).start()
    return released


def _delete_quietly(folder: Path) -> None:
    """Delete ``folder`` at the lowest CPU priority (this thread only: on Linux a thread is its own task), so that
    what the first chapter does meanwhile is not slowed."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass
    shutil.rmtree(folder, ignore_errors=True)


def _prepare_layout(root: Path) -> dict[str, Path]:
    if root.exists():  # a folder left by an earlier emulator run (job names are unique within one); this job's
        for child in root.iterdir():  # record, written when it was created, stays
            if child.name == JOB_RECORD:
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    layout = {"root": root, "config": root / "input" / "config", "data": root / "input" / "data",
              "code": root / "code", "model": root / "model", "output": root / "output",
              "output_data": root / "output" / "data", "checkpoints": root / "checkpoints"}
    for key, path in layout.items():
        if key != "code":
            path.mkdir(parents=True, exist_ok=True)
    return layout


def _fetch_channels(config: list[dict[str, Any]], data_dir: Path) -> dict[str, Path]:
    """Each channel into ``input/data/NAME``: copied from the local S3, or a link to a ``file://`` folder."""
    channels = {}
    for ch in config:
        name = ch["ChannelName"]
        source = (ch.get("DataSource") or {}).get("S3DataSource")
        if not source:
            raise ClientError(f"Channel {name}: the local SageMaker reads S3DataSource channels only.")
        uri, dest = source["S3Uri"], data_dir / name
        if uri.startswith("file://"):
            folder = Path(uri[len("file://"):])
            if not folder.is_dir():
                raise ClientError(f"Data download failed: the folder {folder} of channel {name} does not exist.")
            dest.symlink_to(folder.resolve(), target_is_directory=True)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            if source.get("S3DataType", "S3Prefix") != "S3Prefix":
                raise ClientError(f"Channel {name}: S3DataType {source['S3DataType']} is not supported locally.")
            if storage.download_prefix(uri, dest) == 0:
                raise ClientError(f'Data download failed:No S3 objects found under S3 URL "{uri}" given in input '
                                  f"data source. Please ensure that the bucket exists and that objects exist "
                                  "under that S3 prefix.")
        channels[name] = dest
    return channels


def _write_config(params: dict[str, Any], layout: dict[str, Path], channels: Mapping[str, Path]) -> None:
    res = params["ResourceConfig"]
    hosts = [f"algo-{i + 1}" for i in range(int(res.get("InstanceCount", 1)))]
    files = {
        "hyperparameters.json": params.get("HyperParameters") or {},
        "inputdataconfig.json": {c["ChannelName"]: {"TrainingInputMode": c.get("InputMode", "File"),
                                                    "S3DistributionType": "FullyReplicated",
                                                    "RecordWrapperType": "None"}
                                 for c in params.get("InputDataConfig") or []},
        "resourceconfig.json": {"current_host": hosts[0], "current_instance_type": res.get("InstanceType", "local"),
                                "current_group_name": "homogeneousCluster", "hosts": hosts,
                                "instance_groups": [{"instance_group_name": "homogeneousCluster",
                                                     "instance_type": res.get("InstanceType", "local"),
                                                     "hosts": hosts}],
                                "network_interface_name": "eth0"},
    }
    tensorboard = tensorboard_local_path(params, layout["root"])
    if tensorboard is not None:  # the container finds LocalPath here (smdebug reads the same file)
        files["tensorboardoutputconfig.json"] = {"LocalPath": str(tensorboard),
                                                 "S3OutputPath": params["TensorBoardOutputConfig"]["S3OutputPath"]}
    for fname, content in files.items():
        (layout["config"] / fname).write_text(json.dumps(content))


def tensorboard_local_path(params: Mapping[str, Any], root: Path) -> Path | None:
    """``TensorBoardOutputConfig.LocalPath`` (default ``/opt/ml/output/tensorboard``) inside the job folder."""
    config = params.get("TensorBoardOutputConfig")
    if not config:
        return None
    local = config.get("LocalPath") or "/opt/ml/output/tensorboard"
    rel = Path(local).relative_to("/opt/ml") if Path(local).is_relative_to("/opt/ml") else Path(local.lstrip("/"))
    return root / rel


def tensorboard_uri(params: Mapping[str, Any], name: str) -> str | None:
    """Where the service uploads the job's TensorBoard folder: ``S3OutputPath/JOB/tensorboard-output/``."""
    config = params.get("TensorBoardOutputConfig")
    return f"{config['S3OutputPath'].rstrip('/')}/{name}/tensorboard-output" if config else None


def _extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")  # refuses absolute paths, '..' and links outside


def _fetch_code(uri: str, dest: Path) -> None:
    """``sagemaker_submit_directory`` into ``code/``: a tar.gz in S3 or on disk, or a folder on disk."""
    dest.mkdir(parents=True, exist_ok=True)
    if uri.startswith("s3://"):
        archive = dest.parent / "sourcedir.tar.gz"
        try:
            archive.write_bytes(storage.read_object(uri))
        except KeyError:
            raise ClientError(f"The source archive {uri} does not exist.") from None
        _extract(archive, dest)
    else:
        path = Path(uri.removeprefix("file://"))
        if path.is_dir():
            shutil.copytree(path, dest, dirs_exist_ok=True)
        elif path.is_file():
            _extract(path, dest)
        else:
            raise ClientError(f"The source directory {uri} does not exist.")


def _python(*args: str) -> list[str]:
    """This interpreter, unbuffered, without PYTHON* variables or user site-packages."""
    return [sys.executable, "-u", "-E", "-s", *args]


def _launcher(instance_count: int, script: list[str]) -> list[str]:
    if instance_count <= 1:
        return _python(*script)
    from helpers.serving import free_port

    return _python("-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(instance_count),
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *script)


def _container_command(params: dict[str, Any], name: str, arn: str, layout: dict[str, Path],
                       channels: Mapping[str, Path]) -> tuple[list[str], Path, dict[str, str]]:
    """The command, working folder and environment the training container would run the script with."""
    raw = params.get("HyperParameters") or {}
    count = int(params["ResourceConfig"].get("InstanceCount", 1))
    user_channels = {k: v for k, v in channels.items() if k not in ("code", "sm_drivers")}
    # The container's own entry point (the training toolkit) runs unless the request replaces it: SDK v3's
    # ModelTrainer sets ContainerEntrypoint to its sm_drivers script; a tuning job cannot, so its trials take
    # the toolkit's path (sagemaker_program) even when they carry an sm_drivers channel.
    entrypoint = (params.get("AlgorithmSpecification") or {}).get("ContainerEntrypoint")
    if "sm_drivers" in channels and entrypoint:  # SDK v3 ModelTrainer
        drivers = channels["sm_drivers"]
        source = _read_json(drivers / "sourcecode.json")
        code = channels.get("code", layout["code"])
        code.mkdir(parents=True, exist_ok=True)
        src_dir = str(source.get("source_dir") or "")
        if src_dir.endswith(".tar.gz"):
            _extract(code / Path(src_dir).name, code)
        hps = {k: json_or_str(v) for k, v in raw.items()}
        entry = source.get("entry_script") or ""
        if source.get("command"):
            cmd = ["/bin/bash", "-c", " ".join(source["command"].split() +
                                                [shlex.quote(str(a)) for a in source.get("args") or []])]
        else:
            if not entry:
                raise ClientError("sourcecode.json names neither an entry script nor a command.")
            cmd = _launcher(count, [entry, *driver_args(raw)])
        extra = {"SM_SOURCE_DIR": str(code), "SM_ENTRY_SCRIPT": entry,
                 "SM_DISTRIBUTED_DRIVER_DIR": str(drivers / "distributed_drivers")}
    elif "sagemaker_program" in raw:  # the framework container (SDK v2, the AWS CLI)
        program = str(json_or_str(raw["sagemaker_program"]))
        submit = str(json_or_str(raw.get("sagemaker_submit_directory", "")))
        code = layout["code"]
        if submit:
            _fetch_code(submit, code)
        else:
            code.mkdir(parents=True, exist_ok=True)
        if not (code / program).is_file():
            raise ClientError(f"The entry point {program} is not in the source directory {submit or '(none)'}.")
        hps = toolkit_hyperparameters(raw)
        cmd = _launcher(count, [program, *toolkit_args(hps)])
        extra = {"SM_USER_ENTRY_POINT": program, "SM_MODULE_NAME": Path(program).stem, "SM_MODULE_DIR": submit,
                 "SM_USER_ARGS": json.dumps(toolkit_args(hps))}
    else:
        raise ClientError("The local SageMaker runs script-mode jobs: set the hyperparameters sagemaker_program "
                          "and sagemaker_submit_directory (SDK v2, the AWS CLI), or train with ModelTrainer and "
                          "a SourceCode (SDK v3).")
    _check_requirements(code / "requirements.txt", layout["root"] / JOB_LOG)
    hosts = [f"algo-{i + 1}" for i in range(count)]
    res = params["ResourceConfig"]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "SM_", "PYTHON", "TRAINING_JOB_", "SAGEMAKER_", "MLFLOW_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    root = layout["root"]
    paths = {"SM_MODEL_DIR": layout["model"], "SM_INPUT_DIR": root / "input", "SM_INPUT_DATA_DIR": layout["data"],
             "SM_INPUT_CONFIG_DIR": layout["config"], "SM_OUTPUT_DIR": layout["output"],
             "SM_OUTPUT_DATA_DIR": layout["output_data"], "SM_OUTPUT_FAILURE": layout["output"] / "failure",
             "SM_CHECKPOINT_DIR": layout["checkpoints"], "SAGEMAKER_BASE_DIR": root}
    env.update({k: str(v) for k, v in paths.items()})
    env.update({
        "TRAINING_JOB_NAME": name, "TRAINING_JOB_ARN": arn, "PYTHONUNBUFFERED": "1",
        "SM_CHANNELS": json.dumps(sorted(user_channels)), "SM_HPS": json.dumps(hps), "SM_HOSTS": json.dumps(hosts),
        "SM_CURRENT_HOST": hosts[0], "SM_CURRENT_INSTANCE_TYPE": res.get("InstanceType", "local"),
        "SM_HOST_COUNT": str(count), "SM_NUM_GPUS": str(gpu_count()), "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "SM_NETWORK_INTERFACE_NAME": "eth0", "SM_LOG_LEVEL": "20",
    })
    for ch in user_channels:
        env[f"SM_CHANNEL_{ch.upper()}"] = str(layout["data"] / ch)
    for key, value in hps.items():
        env[f"SM_HP_{key.replace('-', '_').upper()}"] = value if isinstance(value, str) else json.dumps(value)
    env["SM_TRAINING_ENV"] = json.dumps({
        "job_name": name, "hosts": hosts, "current_host": hosts[0], "num_gpus": int(env["SM_NUM_GPUS"]),
        "num_cpus": int(env["SM_NUM_CPUS"]), "hyperparameters": hps, "model_dir": env["SM_MODEL_DIR"],
        "output_data_dir": env["SM_OUTPUT_DATA_DIR"],
        "channel_input_dirs": {c: env[f"SM_CHANNEL_{c.upper()}"] for c in user_channels}})
    env.update(extra)
    env.update({k: str(v) for k, v in (params.get("Environment") or {}).items()})
    return cmd, code, env


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}") if path.is_file() else {}
    except ValueError:
        raise ClientError(f"{path.name} in the sm_drivers channel is not valid JSON.") from None


def _check_requirements(path: Path, job_log: Path) -> None:
    """Say which pinned requirements this interpreter does not have at that version (the container installs them)."""
    if not path.is_file():
        return
    from importlib import metadata

    notes = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" not in line:
            continue
        pkg, _, want = line.partition("==")
        try:
            have = metadata.version(pkg.strip())
        except metadata.PackageNotFoundError:
            have = None
        if have != want.strip():
            notes.append(f"requirements.txt: {line} (here: {have or 'not installed'}; the container would install it)")
    if notes:
        with open(job_log, "a", encoding="utf-8") as f:
            f.write("\n".join(notes) + "\n")


def _output_uri(params: dict[str, Any], name: str, filename: str) -> str:
    return f"{params['OutputDataConfig']['S3OutputPath'].rstrip('/')}/{name}/output/{filename}"


def _tar(folder: Path, dest: Path) -> Path:
    """``folder``'s contents as a ``.tar.gz``, gzip level 0 (stored blocks: any gunzip reads it, and weights hardly
    compress; deflating 45 MB of them takes 1.5 s on a small CPU, a tuning trial's whole training time)."""
    with tarfile.open(dest, "w:gz", compresslevel=0) as tar:
        for item in sorted(folder.iterdir()) if folder.is_dir() else []:
            tar.add(item, arcname=item.name)
    return dest


def _upload_artifacts(params: dict[str, Any], name: str, layout: dict[str, Path]) -> None:
    """``model.tar.gz`` (the model folder) and ``output.tar.gz`` (output/data) under the job's output path."""
    for folder, filename in ((layout["model"], "model.tar.gz"), (layout["output_data"], "output.tar.gz")):
        archive = _tar(folder, layout["output"] / filename)
        storage.upload_file(archive, _output_uri(params, name, filename))
