"""The local SageMaker's tuning: search-space checks, sampling and the median stopping rule."""

import optuna
import pytest

from helpers.emulator import tuning
from helpers.emulator.server import AwsError

RANGES = {"ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.1",
                                         "ScalingType": "Logarithmic"}],
          "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "2", "MaxValue": "4"}],
          "CategoricalParameterRanges": [{"Name": "batch_size", "Values": ["32", "64"]}]}


def config(**kw):
    return {"Strategy": "Bayesian", "ParameterRanges": RANGES, "ResourceLimits": {"MaxNumberOfTrainingJobs": 3},
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "valid:accuracy"}, **kw}


def test_samples_stay_in_range_and_are_strings():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        hp = tuning.suggest(study.ask(), RANGES)
        assert set(hp) == {"lr", "epochs", "batch_size"} and all(isinstance(v, str) for v in hp.values())
        assert 0.0001 <= float(hp["lr"]) <= 0.1 and hp["epochs"] in ("2", "3", "4") and hp["batch_size"] in ("32", "64")


@pytest.mark.parametrize("bad, message", [
    ({"Strategy": "Hyperband"}, "Hyperband"),
    ({"Strategy": "Grid"}, "only categorical"),
    ({"ParameterRanges": {}}, "at least one"),
    ({"ResourceLimits": {}}, "MaxNumberOfTrainingJobs"),
    ({"ParameterRanges": {"ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0", "MaxValue": "1",
                                                         "ScalingType": "Logarithmic"}]}}, "greater than 0"),
])
def test_untunable_configurations_are_refused(bad, message):
    tuning.check_config(config())
    with pytest.raises(AwsError, match=message):
        tuning.check_config(config(**bad))


def test_grid_needs_no_job_limit_and_counts_combinations():
    grid = {"CategoricalParameterRanges": [{"Name": "a", "Values": ["1", "2", "3"]}, {"Name": "b", "Values": ["x", "y"]}]}
    tuning.check_config(config(Strategy="Grid", ParameterRanges=grid, ResourceLimits={}))
    assert tuning.grid_size(grid) == 6


def test_median_rule_compares_with_earlier_running_averages():
    others = [[0.5, 0.7], [0.6, 0.8], [0.7, 0.9]]  # running averages at step 2: 0.6, 0.7, 0.8 -> median 0.7
    assert tuning.should_stop([0.9, 0.65], others, maximize=True)
    assert not tuning.should_stop([0.9, 0.75], others, maximize=True)
    assert tuning.should_stop([0.1, 0.75], others, maximize=False)  # minimizing: above the median is worse
    assert not tuning.should_stop([0.1, 0.1], others[:2], maximize=True)  # too few trials reached step 2
    assert not tuning.should_stop([0.1, 0.1, 0.1], others, maximize=True)  # nobody reached step 3
