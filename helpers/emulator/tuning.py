"""Hyperparameter tuning jobs on the local SageMaker: the search strategy runs here, each trial is a training job.

- **Strategies**: ``Bayesian`` with Optuna's TPE sampler (a Bayesian method), ``Random``, and ``Grid`` (over
  categorical ranges only, as on the service). ``Hyperband`` and multi-algorithm jobs are refused.
- **Trials** are training jobs named as the service names them (``TUNINGJOB-001-1a2b3c4d``), with the
  static hyperparameters plus the tuned ones, as strings; the objective is the last value its metric
  regex found in the trial's log.
- **Early stopping** (``TrainingJobEarlyStoppingType="Auto"``) applies the service's median rule: after
  each value of the objective, a trial stops when it is worse than the median of the earlier trials'
  running averages up to the same step (once :data:`EARLY_STOPPING_MIN_TRIALS` trials reached it).
- ``DescribeHyperParameterTuningJob``, ``ListTrainingJobsForHyperParameterTuningJob`` and
  ``StopHyperParameterTuningJob`` report and end it as the service does.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import secrets
import statistics
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from helpers.emulator.server import AwsError, validation_error
from helpers.emulator.training import TrainingJobs, now

log = logging.getLogger(__name__)

EARLY_STOPPING_MIN_TRIALS = 3  # earlier trials that must have reached a step before the median rule applies
TERMINAL = ("Completed", "Failed", "Stopped")


# --------------------------------------------------------------------------------------------------
# Pure functions: the search space and the stopping rule


def parameter_names(ranges: dict[str, Any]) -> list[str]:
    return [r["Name"] for key in ("IntegerParameterRanges", "ContinuousParameterRanges", "CategoricalParameterRanges")
            for r in ranges.get(key, [])]


def check_config(config: dict[str, Any]) -> None:
    """Refuse, with the service's error, what cannot be tuned (here or there)."""
    strategy = config.get("Strategy", "Bayesian")
    ranges = config.get("ParameterRanges") or {}
    if strategy == "Hyperband":
        raise validation_error("The local SageMaker runs the Bayesian, Random and Grid strategies, not Hyperband.")
    if not parameter_names(ranges):
        raise validation_error("ParameterRanges must name at least one hyperparameter to tune.")
    if strategy == "Grid" and (ranges.get("IntegerParameterRanges") or ranges.get("ContinuousParameterRanges")):
        raise validation_error("Grid search supports only categorical parameter ranges (CategoricalParameterRanges).")
    for r in ranges.get("IntegerParameterRanges", []) + ranges.get("ContinuousParameterRanges", []):
        lo, hi = float(r["MinValue"]), float(r["MaxValue"])
        if lo > hi:
            raise validation_error(f"The MinValue of {r['Name']} is greater than its MaxValue.")
        if r.get("ScalingType") in ("Logarithmic", "ReverseLogarithmic") and lo <= 0:
            raise validation_error(f"Logarithmic scaling of {r['Name']} needs a MinValue greater than 0.")
        if r.get("ScalingType") == "ReverseLogarithmic" and hi >= 1:
            raise validation_error(f"ReverseLogarithmic scaling of {r['Name']} needs a MaxValue less than 1.")
    limits = config.get("ResourceLimits") or {}
    if strategy != "Grid" and not limits.get("MaxNumberOfTrainingJobs"):
        raise validation_error("ResourceLimits.MaxNumberOfTrainingJobs is required for this strategy.")


def grid_size(ranges: dict[str, Any]) -> int:
    return math.prod(len(r["Values"]) for r in ranges.get("CategoricalParameterRanges", []))


def grid_points(ranges: dict[str, Any], seed: int | None) -> list[dict[str, str]]:
    """Every combination of the categorical values, in an order shuffled by ``seed``."""
    import random

    cats = ranges.get("CategoricalParameterRanges", [])
    points = [dict(zip([r["Name"] for r in cats], combo)) for combo in itertools.product(*(r["Values"] for r in cats))]
    random.Random(seed).shuffle(points)
    return points


def suggest(trial: Any, ranges: dict[str, Any]) -> dict[str, str]:
    """One point of the space from an Optuna trial, as the string hyperparameters a trial receives."""
    values: dict[str, str] = {}
    for r in ranges.get("IntegerParameterRanges", []):
        lo, hi = int(r["MinValue"]), int(r["MaxValue"])
        values[r["Name"]] = str(trial.suggest_int(r["Name"], lo, hi, log=r.get("ScalingType") == "Logarithmic"))
    for r in ranges.get("ContinuousParameterRanges", []):
        lo, hi, scaling = float(r["MinValue"]), float(r["MaxValue"]), r.get("ScalingType", "Auto")
        if scaling == "ReverseLogarithmic":  # dense near MaxValue: log-uniform in 1 - x
            value = 1.0 - trial.suggest_float(f"1-{r['Name']}", 1.0 - hi, 1.0 - lo, log=True)
        else:
            value = trial.suggest_float(r["Name"], lo, hi, log=scaling == "Logarithmic")
        values[r["Name"]] = repr(value)
    for r in ranges.get("CategoricalParameterRanges", []):
        values[r["Name"]] = str(trial.suggest_categorical(r["Name"], list(r["Values"])))
    return values


def running_average(values: list[float], step: int) -> float:
    return sum(values[:step]) / step


def should_stop(values: list[float], others: list[list[float]], maximize: bool,
                min_trials: int = EARLY_STOPPING_MIN_TRIALS) -> bool:
    """The service's median rule at this trial's latest step (1-based ``len(values)``)."""
    step = len(values)
    peers = [running_average(v, step) for v in others if len(v) >= step]
    if step == 0 or len(peers) < min_trials:
        return False
    median = statistics.median(peers)
    return values[-1] < median if maximize else values[-1] > median


# --------------------------------------------------------------------------------------------------
# Jobs


@dataclass
class _Tuning:
    name: str
    region: str
    job: Any  # moto's HyperParameterTuningJob
    params: dict[str, Any]
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    trials: list[dict[str, Any]] = field(default_factory=list)  # name, hyperparameters, values, status
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None
    parallel: int = 1  # trials at once (MaxParallelTrainingJobs, at most the number of trials)


class TuningJobs:
    """Create, Describe, Stop and ListTrainingJobsFor... of hyperparameter tuning jobs, executed."""

    def __init__(self, training: TrainingJobs) -> None:
        self.training = training
        self.runs: dict[tuple[str, str], _Tuning] = {}
        self._lock = threading.Lock()

    def handlers(self) -> dict[str, Callable[[dict[str, Any], str], dict[str, Any]]]:
        return {"CreateHyperParameterTuningJob": self.create, "DescribeHyperParameterTuningJob": self.describe,
                "StopHyperParameterTuningJob": self.stop,
                "ListTrainingJobsForHyperParameterTuningJob": self.list_training_jobs}

    def _get(self, name: str, region: str) -> _Tuning:
        run = self.runs.get((region, name))
        if run is None:
            raise AwsError("ResourceNotFound", f"Amazon SageMaker can't find a tuning job with name {name}")
        return run

    # -- API -------------------------------------------------------------------------------------
    def create(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        name = params["HyperParameterTuningJobName"]
        if params.get("TrainingJobDefinitions"):
            raise validation_error("The local SageMaker tunes one TrainingJobDefinition, not several.")
        if not params.get("TrainingJobDefinition"):
            raise validation_error("TrainingJobDefinition is required.")
        config = params["HyperParameterTuningJobConfig"]
        check_config(config)
        definition = params["TrainingJobDefinition"]
        metric = (config.get("HyperParameterTuningJobObjective") or {}).get("MetricName")
        names = [d["Name"] for d in (definition.get("AlgorithmSpecification") or {}).get("MetricDefinitions") or []]
        if not metric or metric not in names:
            raise validation_error(f"The objective metric {metric!r} must be one of the training job definition's "
                                   f"MetricDefinitions ({', '.join(names) or 'none'}).")
        backend = TrainingJobs.backend(region)
        with self._lock:
            if name in backend.hyper_parameter_tuning_jobs:
                raise AwsError("ResourceInUse", f"Hyperparameter tuning job {name} already exists.")
            original = copy.deepcopy(params)
            backend.create_hyper_parameter_tuning_job(
                hyper_parameter_tuning_job_name=name, hyper_parameter_tuning_job_config=copy.deepcopy(config),
                training_job_definition=copy.deepcopy(definition), training_job_definitions=None,
                warm_start_config=params.get("WarmStartConfig"), tags=params.get("Tags"), autotune=None)
            job = backend.hyper_parameter_tuning_jobs[name]
            job.creation_time = job.last_modified_time = now()
            job.hyper_parameter_tuning_job_status = "InProgress"
            job.hyper_parameter_tuning_end_time = None
            run = _Tuning(name=name, region=region, job=job, params=original)
            self.runs[(region, name)] = run
            self._update(run)
        run.thread = threading.Thread(target=self._execute, args=(run,), name=f"tuning-{name}", daemon=True)
        run.thread.start()
        return {"HyperParameterTuningJobArn": job.arn}

    def describe(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        run = self._get(params["HyperParameterTuningJobName"], region)
        job = run.job
        with run.lock:
            out = {
                "HyperParameterTuningJobName": run.name, "HyperParameterTuningJobArn": job.arn,
                "HyperParameterTuningJobConfig": run.params["HyperParameterTuningJobConfig"],
                "TrainingJobDefinition": run.params["TrainingJobDefinition"],
                "HyperParameterTuningJobStatus": job.hyper_parameter_tuning_job_status,
                "CreationTime": job.creation_time, "LastModifiedTime": job.last_modified_time,
                "HyperParameterTuningEndTime": job.hyper_parameter_tuning_end_time,
                "TrainingJobStatusCounters": job.training_job_status_counters,
                "ObjectiveStatusCounters": job.objective_status_counters,
                "BestTrainingJob": job.best_training_job,
                "FailureReason": job.failure_reason or None,
            }
        return {k: v for k, v in out.items() if v is not None}

    def list_training_jobs(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        run = self._get(params["HyperParameterTuningJobName"], region)
        with run.lock:
            summaries = [self._summary(run, t) for t in run.trials]
        key = params.get("SortBy", "CreationTime")
        if key == "FinalObjectiveMetricValue":
            summaries = [s for s in summaries if "FinalHyperParameterTuningJobObjectiveMetric" in s]
            summaries.sort(key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"],
                           reverse=params.get("SortOrder", "Descending") == "Descending")
        elif key == "Status":
            summaries.sort(key=lambda s: s["TrainingJobStatus"], reverse=params.get("SortOrder") == "Descending")
        else:
            summaries.sort(key=lambda s: s["CreationTime"], reverse=params.get("SortOrder") == "Descending")
        if params.get("StatusEquals"):
            summaries = [s for s in summaries if s["TrainingJobStatus"] == params["StatusEquals"]]
        start = int(params.get("NextToken") or 0)
        size = int(params.get("MaxResults") or 100)
        page = summaries[start:start + size]
        out: dict[str, Any] = {"TrainingJobSummaries": page}
        if start + size < len(summaries):
            out["NextToken"] = str(start + size)
        return out

    def stop(self, params: dict[str, Any], region: str) -> dict[str, Any]:
        run = self._get(params["HyperParameterTuningJobName"], region)
        if run.job.hyper_parameter_tuning_job_status != "InProgress":
            raise validation_error(f"The tuning job {run.name} is in status "
                                   f"{run.job.hyper_parameter_tuning_job_status} and cannot be stopped.")
        run.job.hyper_parameter_tuning_job_status = "Stopping"
        run.stop.set()
        return {}

    def shutdown(self) -> None:
        for run in list(self.runs.values()):
            run.stop.set()
        for run in list(self.runs.values()):
            if run.thread is not None:
                run.thread.join(timeout=self.training.stop_grace_s + 30)

    # -- the search ------------------------------------------------------------------------------
    def _summary(self, run: _Tuning, trial: dict[str, Any]) -> dict[str, Any]:
        job = TrainingJobs.backend(run.region).training_jobs[trial["name"]]
        objective = run.params["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
        s = {"TrainingJobName": trial["name"], "TrainingJobArn": job.arn, "TuningJobName": run.name,
             "CreationTime": job.creation_time, "TrainingJobStatus": job.training_job_status,
             "TunedHyperParameters": trial["hyperparameters"],
             "ObjectiveStatus": {"Completed": "Succeeded", "Stopped": "Succeeded", "Failed": "Failed"}.get(
                 job.training_job_status, "Pending")}
        for key in ("TrainingStartTime", "TrainingEndTime", "FailureReason"):
            value = getattr(job, _snake(key), None)
            if value:
                s[key] = value
        if trial["values"] and job.training_job_status in TERMINAL:
            s["FinalHyperParameterTuningJobObjectiveMetric"] = {
                "Type": objective["Type"], "MetricName": objective["MetricName"], "Value": trial["values"][-1]}
        elif job.training_job_status in TERMINAL:
            s["ObjectiveStatus"] = "Failed"
        return s

    def _update(self, run: _Tuning) -> None:
        """Counters and the best job, from the trials (under ``run.lock``)."""
        jobs = TrainingJobs.backend(run.region).training_jobs
        statuses = [jobs[t["name"]].training_job_status for t in run.trials]
        run.job.training_job_status_counters = {
            "Completed": statuses.count("Completed"), "InProgress": sum(s not in TERMINAL for s in statuses),
            "RetryableError": 0, "NonRetryableError": statuses.count("Failed"), "Stopped": statuses.count("Stopped")}
        summaries = [self._summary(run, t) for t in run.trials]
        scored = [s for s in summaries if "FinalHyperParameterTuningJobObjectiveMetric" in s]
        run.job.objective_status_counters = {
            "Succeeded": len(scored), "Pending": sum(s["ObjectiveStatus"] == "Pending" for s in summaries),
            "Failed": sum(s["ObjectiveStatus"] == "Failed" for s in summaries)}
        objective = run.params["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
        if scored:
            pick = max if objective["Type"] == "Maximize" else min
            run.job.best_training_job = pick(
                scored, key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"])
        else:
            run.job.best_training_job = None
        run.job.last_modified_time = now()

    def _execute(self, run: _Tuning) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        config = run.params["HyperParameterTuningJobConfig"]
        ranges = config["ParameterRanges"]
        strategy = config.get("Strategy", "Bayesian")
        seed = config.get("RandomSeed")
        limits = config.get("ResourceLimits") or {}
        grid = grid_points(ranges, seed) if strategy == "Grid" else []
        if strategy == "Grid":
            total = min(len(grid), int(limits.get("MaxNumberOfTrainingJobs") or len(grid)))
        else:
            total = int(limits["MaxNumberOfTrainingJobs"])
        sampler = (optuna.samplers.TPESampler(seed=seed) if strategy == "Bayesian"
                   else optuna.samplers.RandomSampler(seed=seed))
        parallel = max(1, int(limits.get("MaxParallelTrainingJobs") or 1))
        run.parallel = max(1, min(parallel, total))
        maximize = config["HyperParameterTuningJobObjective"]["Type"] == "Maximize"
        study = optuna.create_study(direction="maximize" if maximize else "minimize", sampler=sampler)
        early = config.get("TrainingJobEarlyStoppingType", "Off") == "Auto"
        deadline = limits.get("MaxRuntimeInSeconds")
        started = now()
        slots = threading.Semaphore(parallel)
        workers: list[threading.Thread] = []
        try:
            for i in itertools.count(1):
                if i > total or run.stop.is_set():
                    break
                while not slots.acquire(timeout=0.25):
                    if run.stop.is_set():
                        break
                if run.stop.is_set():
                    break
                if deadline and (now() - started).total_seconds() > deadline:
                    break
                with run.lock:
                    trial = None if grid else study.ask()
                    tuned = grid[i - 1] if grid else suggest(trial, ranges)
                w = threading.Thread(target=self._trial, args=(run, study, trial, i, tuned, maximize, early, slots),
                                     name=f"{run.name}-{i:03d}", daemon=True)
                w.start()
                workers.append(w)
            for w in workers:
                while w.is_alive():
                    w.join(timeout=0.25)
                    if deadline and (now() - started).total_seconds() > deadline:
                        run.stop.set()
                    if run.stop.is_set():
                        self._stop_trials(run)
        except Exception as e:  # noqa: BLE001 - the tuning job fails; the emulator goes on
            log.exception("tuning job %s", run.name)
            run.job.failure_reason = f"InternalServerError: {type(e).__name__}: {e}"
        finally:
            self._stop_trials(run)
            for w in workers:
                w.join(timeout=self.training.stop_grace_s + 30)
            with run.lock:
                self._update(run)
                if run.job.failure_reason:
                    run.job.hyper_parameter_tuning_job_status = "Failed"
                elif run.stop.is_set():
                    run.job.hyper_parameter_tuning_job_status = "Stopped"
                elif run.job.best_training_job is None:
                    run.job.hyper_parameter_tuning_job_status = "Failed"
                    run.job.failure_reason = "No training job ended with a value of the objective metric."
                else:
                    run.job.hyper_parameter_tuning_job_status = "Completed"
                run.job.hyper_parameter_tuning_end_time = now()
            run.done.set()

    def _stop_trials(self, run: _Tuning) -> None:
        jobs = TrainingJobs.backend(run.region).training_jobs
        for t in list(run.trials):
            if jobs[t["name"]].training_job_status == "InProgress":
                try:
                    self.training.stop({"TrainingJobName": t["name"]}, run.region)
                except AwsError:
                    pass  # it ended meanwhile

    def _trial(self, run: _Tuning, study: Any, trial: Any | None, index: int, tuned: dict[str, str], maximize: bool,
               early: bool, slots: threading.Semaphore) -> None:
        import optuna

        definition = run.params["TrainingJobDefinition"]
        objective = run.params["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"]
        name = f"{run.name}-{index:03d}-{secrets.token_hex(4)}"
        record: dict[str, Any] = {"name": name, "hyperparameters": tuned, "values": []}
        stopped_early = threading.Event()

        def on_metric(metric: str, value: float) -> None:
            if metric != objective:
                return
            with run.lock:
                record["values"].append(value)
                others = [t["values"] for t in run.trials if t is not record]
                stop = early and should_stop(record["values"], others, maximize)
            if stop and not stopped_early.is_set():
                stopped_early.set()
                try:
                    self.training.stop({"TrainingJobName": name}, run.region)
                except AwsError:
                    pass

        request = {
            "TrainingJobName": name, "RoleArn": definition["RoleArn"],
            "AlgorithmSpecification": definition["AlgorithmSpecification"],
            "HyperParameters": {**(definition.get("StaticHyperParameters") or {}), **tuned},
            "OutputDataConfig": definition["OutputDataConfig"], "ResourceConfig": definition["ResourceConfig"],
            "StoppingCondition": definition["StoppingCondition"],
            "Tags": [{"Key": "sagemaker:tuning-job", "Value": run.name}],
        }
        for key in ("InputDataConfig", "CheckpointConfig", "Environment", "VpcConfig", "EnableNetworkIsolation",
                    "EnableManagedSpotTraining"):
            if definition.get(key) is not None:
                request[key] = definition[key]
        try:
            try:
                self.training.create(request, run.region, on_metric=on_metric, peers=run.parallel)
            except AwsError as e:
                log.warning("tuning job %s: trial %s was refused: %s", run.name, name, e.message)
                if trial is not None:
                    with run.lock:
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return
            with run.lock:
                run.trials.append(record)
                self._update(run)
            status = self.training.wait(name, run.region)
            with run.lock:
                values = record["values"]
                if trial is None:  # a grid point: nothing to learn from
                    pass
                elif values and status in ("Completed", "Stopped"):
                    study.tell(trial, values[-1])
                else:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                self._update(run)
        finally:
            slots.release()


def _snake(camel: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in camel).lstrip("_")
