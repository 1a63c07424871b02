"""Hyperparameter tuning: one search space, translated to Optuna (local) and to SageMaker's ranges.

The objective is the validation accuracy of the kept model (``valid:accuracy``, the last value the
training script prints). The test split is never seen while tuning: trials get only train and valid.

Locally, trials run in-process through :func:`helpers.runtime.train.fit` under Optuna's TPE sampler, with a
median pruner fed the per-epoch validation accuracy, and an SQLite study in the work dir, so an
interrupted study resumes where it stopped. With a frozen backbone and no augmentation every trial
trains the head on backbone features computed once (:mod:`helpers.runtime.train`'s feature cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from helpers.config import RunConfig
from helpers.runtime.fileio import file_lock
from helpers.runtime.metrics import OBJECTIVE_METRIC, OBJECTIVE_TYPE
from helpers.runtime.settings import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]


#: The search space, defined once: translated by :func:`sagemaker_ranges` and :func:`suggest`.
SEARCH_SPACE: dict[str, LogUniform | IntRange | Choice] = {
    "lr": LogUniform(1e-4, 1e-1),
    "batch_size": Choice((32, 64, 128)),
    "epochs": IntRange(2, 5),
}


def describe_space(space: Mapping[str, Any] = SEARCH_SPACE) -> list[dict[str, str]]:
    """Rows for a table: parameter, kind, range, SageMaker type."""
    rows = []
    for name, dim in space.items():
        if isinstance(dim, LogUniform):
            rows.append({"parameter": name, "kind": "continuous, log scale", "range": f"{dim.low:g} .. {dim.high:g}",
                         "SageMaker": "ContinuousParameter(scaling_type='Logarithmic')"})
        elif isinstance(dim, IntRange):
            rows.append({"parameter": name, "kind": "integer", "range": f"{dim.low} .. {dim.high}",
                         "SageMaker": "IntegerParameter"})
        else:
            rows.append({"parameter": name, "kind": "categorical", "range": ", ".join(map(str, dim.values)),
                         "SageMaker": "CategoricalParameter"})
    return rows


def sagemaker_ranges(space: Mapping[str, Any] = SEARCH_SPACE) -> dict[str, Any]:
    """``hyperparameter_ranges`` for SageMaker's ``HyperparameterTuner``."""
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter

    out: dict[str, Any] = {}
    for name, dim in space.items():
        if isinstance(dim, LogUniform):
            out[name] = ContinuousParameter(dim.low, dim.high, scaling_type="Logarithmic")
        elif isinstance(dim, IntRange):
            out[name] = IntegerParameter(dim.low, dim.high)
        else:
            out[name] = CategoricalParameter(list(dim.values))
    return out


def suggest(trial: Any, space: Mapping[str, Any] = SEARCH_SPACE) -> dict[str, Any]:
    """Sample one point of the space with an Optuna trial."""
    out: dict[str, Any] = {}
    for name, dim in space.items():
        if isinstance(dim, LogUniform):
            out[name] = trial.suggest_float(name, dim.low, dim.high, log=True)
        elif isinstance(dim, IntRange):
            out[name] = trial.suggest_int(name, dim.low, dim.high)
        else:
            out[name] = trial.suggest_categorical(name, list(dim.values))
    return out


def coerce(name: str, value: Any, space: Mapping[str, Any] = SEARCH_SPACE) -> Any:
    """A tuned value as the type its dimension holds (SageMaker hands every hyperparameter back as text)."""
    dim = space[name]
    if isinstance(dim, LogUniform):
        return float(value)
    if isinstance(dim, IntRange):
        return int(value)
    return next((v for v in dim.values if str(v) == str(value)), value)


def static_hyperparameters(cfg: RunConfig, **overrides: Any) -> dict[str, Any]:
    """The hyperparameters every trial shares: model and input choices from the run configuration.

    On the local backend the trials run on this machine and share one feature cache in the work directory
    (``feature_cache``); on AWS each trial's container computes its own.
    """
    local = {"feature_cache": str(cfg.work_path / "cache" / "features")} if cfg.backend == "local" else {}
    return {"backbone": cfg.backbone, "weights": cfg.weights, "image_size": cfg.image_size, "seed": cfg.seed,
            "freeze_backbone": True, "augment": False, "patience": 3, **local, **overrides}


@dataclass
class TuningResult:
    """What either engine found, in one shape for tables, plots, insights and the manifest."""

    engine: str
    trials: Any  # pandas DataFrame: number, state, value, duration_s, epochs_run, and one column per parameter
    best_hyperparameters: dict[str, Any]
    best_value: float
    static: dict[str, Any]
    wall_s: float
    details: dict[str, Any] = field(default_factory=dict)

    def manifest_record(self) -> dict[str, Any]:
        return {"engine": self.engine, "objective": {"metric": OBJECTIVE_METRIC, "type": OBJECTIVE_TYPE,
                                                     "value": self.best_value},
                "hyperparameters": self.best_hyperparameters, "static": self.static,
                "trials": int(len(self.trials)), "wall_s": round(self.wall_s, 2), **self.details}


# --------------------------------------------------------------------------------------------------
# Local engine: Optuna


def study_storage(work_dir: Path, study_name: str) -> str:
    path = work_dir / "hpo" / f"{study_name}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


#: Optuna's heartbeat: a running trial writes one every interval; one silent for the grace period belongs
#: to a process that died, and ``optuna.storages.fail_stale_trials`` marks it FAIL so the study goes on.
HEARTBEAT_S, GRACE_S = 5, 15


def _rdb_storage(optuna: Any, url: str, attempts: int = 5) -> Any:
    """Optuna's RDB storage with heartbeats. Two runs that open a new SQLite file at once would both create its
    tables (one then fails with "already exists", or on alembic's version row): creating it takes a lock on
    a file beside the database, and a failure of that kind still just opens it again."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    lock_path = Path(url.removeprefix("sqlite:///") + ".lock") if url.startswith("sqlite:///") else None
    for attempt in range(attempts):
        try:
            with file_lock(lock_path) if lock_path else contextlib.nullcontext():
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                                  engine_kwargs={"connect_args": {"timeout": 60}}
                                                  if url.startswith("sqlite") else {})
        except (OperationalError, IntegrityError) as e:
            if not ("already exists" in str(e) or "alembic_version" in str(e)) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def tune_local(cfg: RunConfig, data: Mapping[str, Any], *, n_trials: int = 12, n_jobs: int = 1, prune: bool = True,
               feature_cache: bool = True, study_name: str | None = None, timeout_s: float | None = None,
               space: Mapping[str, Any] = SEARCH_SPACE, static: Mapping[str, Any] | None = None,
               storage: str | None = None) -> TuningResult:
    """Run (or resume) an Optuna study of ``n_trials`` trials on the data stage's train and valid splits."""
    with warnings.catch_warnings():  # optuna imports tqdm.auto, which warns when ipywidgets is absent
        warnings.simplefilter("ignore")
        import optuna
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 4, and say so at every use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _tune_local(optuna, cfg, data, n_trials=n_trials, n_jobs=n_jobs, prune=prune,
                           feature_cache=feature_cache, study_name=study_name, timeout_s=timeout_s, space=space,
                           static=static, storage=storage)


def _tune_local(optuna: Any, cfg: RunConfig, data: Mapping[str, Any], *, n_trials: int, n_jobs: int, prune: bool,
                feature_cache: bool, study_name: str | None, timeout_s: float | None, space: Mapping[str, Any],
                static: Mapping[str, Any] | None, storage: str | None) -> TuningResult:

    static = dict(static or static_hyperparameters(cfg))
    if study_name is None:
        fingerprint = hashlib.sha256(json.dumps([static, repr(dict(space)), prune, data["root"]],
                                                sort_keys=True, default=str).encode()).hexdigest()[:8]
        study_name = f"{cfg.backbone}-{Path(data['root']).name}-{cfg.image_size}px-{fingerprint}"
    storage = storage or study_storage(cfg.work_path, study_name)
    if isinstance(storage, str):  # parallel trials wait for SQLite's lock rather than fail; heartbeats find the dead
        storage = _rdb_storage(optuna, storage)
    from helpers.runtime.train import JobPaths, fit  # PyTorch: only when trials run in this process

    cache_dir = cfg.work_path / "cache" / "features"
    splits = data["splits"]
    paths = JobPaths(train=Path(splits["train"]), valid=Path(splits["valid"]), test=None,
                     model_dir=cfg.work_path / "hpo" / "unused", output_dir=cfg.work_path / "hpo" / "unused",
                     checkpoint_dir=None)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2) if prune else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
                                pruner=pruner)
    # A resumed study must not replay the points it already tried: the same seed would (its first trials
    # are random samples), so the seed moves on with the trials the study holds.
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.trials), n_startup_trials=5)
    running = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
    optuna.storages.fail_stale_trials(study)
    if n := len(running - {t.number for t in study.get_trials(deepcopy=False,
                                                               states=(optuna.trial.TrialState.RUNNING,))}):
        log.warning("%d trial(s) of an interrupted run were marked failed", n)
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # a failed trial does not count
    done = len(study.get_trials(deepcopy=False, states=counted))
    remaining = max(0, n_trials - done)
    if done:
        log.info("study %s: %d trial(s) already done, %d to go", study_name, done, remaining)

    def objective(trial: Any) -> float:
        hp = suggest(trial, space)
        tc = TrainConfig(**{**static, **hp, "num_workers": 0 if feature_cache else -1,
                            "feature_cache": str(cache_dir) if feature_cache else "",
                            "use_feature_cache": feature_cache})
        t0 = time.perf_counter()

        def report(epoch: int, row: dict[str, Any]) -> None:
            trial.set_user_attr("epochs_run", epoch)
            trial.report(row["valid_accuracy"], epoch)
            if trial.should_prune():
                trial.set_user_attr("duration_s", time.perf_counter() - t0)
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        r = fit(tc, paths, on_epoch=report, emit=lambda line: None, write_artifacts=False)
        trial.set_user_attr("duration_s", time.perf_counter() - t0)
        trial.set_user_attr("best_epoch", r.best_epoch)
        return float(r.best_valid["accuracy"])

    start = time.perf_counter()
    if remaining:
        from helpers.runtime.progress import bar

        with bar(total=remaining, desc="trials", unit="trial") as pbar:
            # other processes may work on the same study (Optuna's distributed optimisation; their live
            # trials keep heartbeating, so nobody fails them): stop when the study as a whole is done
            study.optimize(objective, n_trials=remaining, n_jobs=n_jobs, timeout=timeout_s, catch=(),
                           callbacks=[lambda s, t: pbar.update(1),
                                      optuna.study.MaxTrialsCallback(n_trials, states=counted)])
    wall = time.perf_counter() - start
    return _result_from_study(study, static, wall, new_trials=remaining, space=space)


def _result_from_study(study: Any, static: dict[str, Any], wall: float, new_trials: int,
                       space: Mapping[str, Any] = SEARCH_SPACE) -> TuningResult:
    import pandas as pd
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     **{k: t.params.get(k) for k in space},
                     "epochs_run": t.user_attrs.get("epochs_run"), "duration_s": t.user_attrs.get("duration_s")})
    trials = pd.DataFrame(rows)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"Study {study.study_name} has no completed trial; see the trials table for failures.")
    best = study.best_trial
    return TuningResult(engine="optuna", trials=trials, best_hyperparameters=dict(best.params),
                        best_value=float(best.value), static=static, wall_s=wall,
                        details={"study": study.study_name, "best_trial": best.number,
                                 "pruned": int(sum(t.state == TrialState.PRUNED for t in study.trials)),
                                 "new_trials": new_trials})


# --------------------------------------------------------------------------------------------------
# What the chapter shows


def pruning_evidence(runs: Mapping[str, Mapping[str, Any]], prune: bool) -> list[str]:
    """What the reference runs (``helpers.bench``'s tuning comparison) measured of early stopping, and whether
    they support this run's choice ``prune``: the median rule must save time without losing the best trial."""
    out, saved, kept = [], [], []
    for name, doc in runs.items():
        rows = {r["variant"]: r for r in doc.get("hpo") or []}
        on, off = rows.get("feature cache + pruning"), rows.get("feature cache only")
        if not (on and off):
            continue
        saved.append(1 - on["wall_s"] / off["wall_s"])
        kept.append(on["best_objective"] >= off["best_objective"] - 1e-9)
        out.append(f"`{name}`: {on['trials']} trials took {on['wall_s']:.1f} s with the median rule "
                   f"({on['pruned']} stopped early) and {off['wall_s']:.1f} s without it; the best objective was "
                   f"{on['best_objective']:.3f} with it and {off['best_objective']:.3f} without.")
    if not out:
        return ["No reference run has measured early stopping yet (`python -m helpers.bench hpo`)."]
    helps = all(kept) and min(saved) >= 0.1
    lost = len(kept) - sum(kept)
    if helps:
        finding = f"the median rule saved {min(saved):.0%} or more of the time and kept the best trial"
    else:
        finding = "the median rule " + ("saved no time" if max(saved) < 0.05 else
                                        f"saved at most {max(saved):.0%} of the time")
        finding += f" and lost the best trial in {lost} of {len(kept)} runs" if lost else ""
    if helps and prune:
        verdict = "so this run stops trials early (prune=True)."
    elif not helps and not prune:
        verdict = ("so this run does not stop trials early (prune=False). Early stopping pays where a trial's epochs "
                   "take minutes of billed instance time, not seconds on cached features: on AWS with a trainable "
                   "backbone, pass prune=True.")
    else:
        verdict = f"this run sets prune={prune} against that measurement."
    out.append(f"Across {len(kept)} reference run(s), {finding}: {verdict}")
    return out


def insights(result: TuningResult) -> list[str]:
    """Plain-language findings computed from the trials."""
    import numpy as np

    df = result.trials
    done = df[df.state == "COMPLETE"]
    pruned = df[df.state == "PRUNED"]
    best = result.best_hyperparameters
    out = [f"The best of {len(df)} trials reached {OBJECTIVE_METRIC} = {result.best_value:.4f} with "
           + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.items()) + "."]
    if len(done) >= 2:
        spread = done.value.max() - done.value.min()
        out.append(f"Completed trials ranged from {done.value.min():.4f} to {done.value.max():.4f} "
                   f"({spread * 100:.1f} points): {'the choice matters' if spread > 0.05 else 'most settings work about as well'}.")
    if len(done) >= 4 and "lr" in done:
        corr = float(np.corrcoef(np.log10(done.lr.astype(float)), done.value.astype(float))[0, 1])
        if math.isfinite(corr) and abs(corr) >= 0.3:
            out.append(f"{'Higher' if corr > 0 else 'Lower'} learning rates did better within this range "
                       f"(correlation of log10(lr) with the objective: {corr:+.2f}).")
        elif math.isfinite(corr):
            out.append(f"The learning rate alone explains little of the objective (correlation {corr:+.2f}).")
    if len(pruned) and "epochs" in pruned:
        saved = pruned.epochs.astype(float).sum() - pruned.epochs_run.fillna(pruned.epochs).astype(float).sum()
        if saved > 0:
            out.append(f"{len(pruned)} trial(s) were stopped early by the median rule, skipping {saved:.0f} of "
                       f"their planned epochs.")
        else:
            out.append(f"{len(pruned)} trial(s) were stopped by the median rule only after their last epoch: an "
                       "epoch on cached features takes less time than a stop takes to arrive, so early stopping "
                       "saves nothing here (it does when an epoch takes minutes).")
    if "duration_s" in df and df.duration_s.notna().any():
        line = (f"Trials took {df.duration_s.median():.2f} s each (median), {df.duration_s.sum():.1f} s in all")
        new = result.details.get("new_trials")
        if new == 0:
            line += "; they were all loaded from the stored study, so this run trained nothing"
        elif new is not None and new < len(df):
            line += f"; {len(df) - new} came from the stored study and {new} ran now ({result.wall_s:.1f} s)"
        out.append(line + ".")
    return out


def final_hyperparameters(cfg: RunConfig, manifest: Any, override: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The final training's hyperparameters: chapter 2's best (or ``override``) on top of the shared settings."""
    from helpers.manifest import PrerequisiteMissing

    if override:
        unknown = sorted(set(override) - set(TrainConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {', '.join(unknown)} in the override; "
                             f"known: {', '.join(sorted(TrainConfig.__dataclass_fields__))}")
        return {**static_hyperparameters(cfg), **override}
    record = manifest.get("hpo")
    if record is None:
        raise PrerequisiteMissing(
            "The best hyperparameters are missing from the run manifest: run chapter 02_hpo first, or pass "
            "hyperparameters={\"lr\": 0.001, \"batch_size\": 64, \"epochs\": 5} to this chapter.")
    if record.get("backbone") not in (None, cfg.backbone):
        raise PrerequisiteMissing(
            f"Chapter 02_hpo tuned {record['backbone']}, but this run uses {cfg.backbone}: run chapter 02_hpo "
            f"with backbone={cfg.backbone!r} first, or pass hyperparameters={{...}}.")
    return {**record["static"], **record["hyperparameters"]}
