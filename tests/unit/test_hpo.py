import time

import optuna

import pandas as pd
import pytest
from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter

from helpers import hpo
from helpers.config import RunConfig
from helpers.data import manifest_record, validate_dataset


@pytest.fixture
def setup(tmp_path, synthetic_root):
    cfg = RunConfig(dataset="synthetic", work_dir=str(tmp_path), image_size=32)
    data = manifest_record(cfg, validate_dataset(synthetic_root, progress=False))
    return cfg, data


def test_one_space_two_translations():
    ranges = hpo.sagemaker_ranges()
    assert isinstance(ranges["lr"], ContinuousParameter) and ranges["lr"].scaling_type == "Logarithmic"
    assert isinstance(ranges["batch_size"], CategoricalParameter) and ranges["batch_size"].values == ["32", "64", "128"]
    assert isinstance(ranges["epochs"], IntegerParameter)
    point = hpo.suggest(optuna.trial.FixedTrial({"lr": 0.01, "batch_size": 64, "epochs": 3}))
    assert point == {"lr": 0.01, "batch_size": 64, "epochs": 3}
    assert [r["parameter"] for r in hpo.describe_space()] == ["lr", "batch_size", "epochs"]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",
                            "ignore:Heartbeat of storage is supposed to be used")  # the test's own dead trial
@pytest.mark.reliability
def test_local_study_tunes_on_validation_only_and_resumes(setup, monkeypatch):
    cfg, data = setup
    seen_test = []
    from helpers.runtime import train

    real_fit = train.fit

    def spy(tc, paths, **kw):
        seen_test.append(paths.test)
        return real_fit(tc, paths, **kw)

    monkeypatch.setattr(train, "fit", spy)
    small = {"lr": hpo.LogUniform(1e-3, 1e-1), "batch_size": hpo.Choice((8, 16)), "epochs": hpo.IntRange(1, 3)}
    r = hpo.tune_local(cfg, data, n_trials=3, space=small)
    assert len(r.trials) == 3 and set(seen_test) == {None}  # the test split is never handed to a trial
    assert 0 <= r.best_value <= 1 and set(r.best_hyperparameters) == {"lr", "batch_size", "epochs"}
    # an interrupted trial (the process died mid-trial: its heartbeat stopped) is marked failed by Optuna's
    # public fail_stale_trials, and the study goes on where it stopped
    monkeypatch.setattr(hpo, "HEARTBEAT_S", 1)
    monkeypatch.setattr(hpo, "GRACE_S", 1)
    storage = optuna.storages.RDBStorage(hpo.study_storage(cfg.work_path, r.details["study"]),
                                         heartbeat_interval=1, grace_period=1)
    dead = optuna.load_study(study_name=r.details["study"], storage=storage).ask()
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)  # SQLite keeps heartbeats to the second
    again = hpo.tune_local(cfg, data, n_trials=5, space=small)
    assert list(again.trials.state).count("FAIL") == 1 and len(again.trials) == 6
    assert len(seen_test) == 5  # 3 + 2 more: the failed trial does not count towards the 5
    points = [tuple(row) for row in again.trials[again.trials.state != "FAIL"][list(small)].itertuples(index=False)]
    assert len(set(points)) == len(points)  # the resumed search did not replay the first trials' points
    rec = again.manifest_record()
    assert rec["objective"]["metric"] == "valid:accuracy" and rec["trials"] == 6


def test_a_space_with_other_dimensions_is_honoured_everywhere(setup):
    """Trials table, best hyperparameters and insights follow the space given, not the default one."""
    cfg, data = setup
    space = {"lr": hpo.LogUniform(1e-3, 1e-1), "dropout": hpo.Choice((0.1, 0.4))}
    r = hpo.tune_local(cfg, data, n_trials=2, space=space, study_name="other-space",
                       static={**hpo.static_hyperparameters(cfg), "epochs": 1, "batch_size": 8})
    assert set(r.best_hyperparameters) == {"lr", "dropout"}
    assert {"lr", "dropout"} <= set(r.trials) and not {"batch_size", "epochs"} & set(r.trials)
    assert "dropout=" in hpo.insights(r)[0]


@pytest.mark.reliability
def test_two_runs_on_one_study_cooperate(setup):
    """Two processes (here threads) tuning one study: neither fails the other's trials, and together they run
    the requested number."""
    import threading

    cfg, data = setup
    small = {"lr": hpo.LogUniform(1e-3, 1e-1), "batch_size": hpo.Choice((8, 16)), "epochs": hpo.IntRange(1, 2)}
    errors = []

    def tune():
        try:
            hpo.tune_local(cfg, data, n_trials=4, space=small, study_name="shared")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    runs = [threading.Thread(target=tune) for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert errors == []
    states = list(hpo.tune_local(cfg, data, n_trials=4, space=small, study_name="shared").trials.state)
    assert "FAIL" not in states and 4 <= len(states) <= 5  # at most one trial over: both may start the last


def test_cached_features_are_shared_by_trials(setup):
    cfg, data = setup
    small = {"lr": hpo.LogUniform(1e-3, 1e-1), "batch_size": hpo.Choice((8,)), "epochs": hpo.IntRange(1, 2)}
    hpo.tune_local(cfg, data, n_trials=2, space=small, study_name="a")
    cache = sorted((cfg.work_path / "cache" / "features").glob("*.pt"))
    assert [f.name.split("-")[2] for f in cache] == ["train", "valid"]  # computed once, never for test


def test_insights_are_computed_from_the_trials():
    trials = pd.DataFrame({
        "number": range(6), "state": ["COMPLETE"] * 4 + ["PRUNED"] * 2,
        "value": [0.5, 0.6, 0.8, 0.9, 0.2, 0.3], "lr": [1e-4, 1e-3, 1e-2, 5e-2, 1e-4, 2e-4],
        "batch_size": [32] * 6, "epochs": [4, 4, 4, 4, 6, 8], "epochs_run": [4, 4, 4, 4, 2, 3],
        "duration_s": [1.0, 1.2, 0.8, 1.1, 0.3, 0.4]})
    r = hpo.TuningResult("optuna", trials, {"lr": 0.05, "batch_size": 32, "epochs": 4}, 0.9, {}, 12.0)
    text = "\n".join(hpo.insights(r))
    assert "valid:accuracy = 0.9000" in text and "lr=0.05" in text
    assert "Higher learning rates did better" in text
    assert "2 trial(s) were stopped early" in text and "skipping 9 of their planned epochs" in text
    assert "40.0 points" in text and "4.8 s in all" in text
    late = r.trials.assign(epochs_run=r.trials.epochs)  # stopped, but after their last epoch
    text = "\n".join(hpo.insights(hpo.TuningResult("sagemaker", late, r.best_hyperparameters, 0.9, {}, 12.0)))
    assert "only after their last epoch" in text and "skipping" not in text


def test_typed_values():
    assert hpo.coerce("batch_size", "64") == 64 and hpo.coerce("lr", "0.5") == 0.5


def test_parallel_trials(setup):
    cfg, data = setup
    small = {"lr": hpo.LogUniform(1e-3, 1e-1), "batch_size": hpo.Choice((8, 16)), "epochs": hpo.IntRange(1, 2)}
    r = hpo.tune_local(cfg, data, n_trials=4, n_jobs=2, space=small, study_name="parallel")
    assert len(r.trials) == 4 and set(r.trials.state) <= {"COMPLETE", "PRUNED"}


def test_tuning_from_a_notebook_does_not_import_pytorch():
    """Chapter 2 builds hyperparameters and tuner requests only: importing PyTorch there costs seconds per run."""
    import subprocess
    import sys

    code = ("import sys; import helpers.hpo, helpers.sagemaker_jobs, helpers.session, helpers.plots, helpers.data; "
            "from helpers.runtime.settings import TrainConfig; TrainConfig(); "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _hpo_run(on_s, off_s, on_best, off_best):
    return {"hpo": [{"variant": "feature cache + pruning", "trials": 8, "wall_s": on_s, "best_objective": on_best,
                     "pruned": 3},
                    {"variant": "feature cache only", "trials": 8, "wall_s": off_s, "best_objective": off_best,
                     "pruned": 0}]}


def test_the_pruning_default_is_judged_by_the_reference_runs():
    useless = {"a": _hpo_run(4.7, 4.5, 0.789, 0.85), "b": _hpo_run(11.8, 10.3, 0.928, 0.928)}
    lines = hpo.pruning_evidence(useless, prune=False)
    assert "`a`: 8 trials took 4.7 s with the median rule (3 stopped early) and 4.5 s without it" in lines[0]
    assert "saved no time and lost the best trial in 1 of 2 runs: so this run does not stop" in lines[-1]
    assert "against that measurement" in hpo.pruning_evidence(useless, prune=True)[-1]
    useful = {"a": _hpo_run(5.0, 10.0, 0.9, 0.9)}
    assert "saved 50% or more of the time and kept the best trial: so this run stops trials early" in \
        hpo.pruning_evidence(useful, prune=True)[-1]
    assert "No reference run" in hpo.pruning_evidence({"c": {"training": []}}, prune=False)[0]
