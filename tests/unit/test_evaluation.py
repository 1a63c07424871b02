"""Test-set insights read well with any class names, digits included."""

import numpy as np

from helpers import evaluation


def test_confusions_quote_the_class_names_and_count_in_words():
    y_true = np.array([8, 8, 1, 9, 9, 9, 3, 3])
    y_pred = np.array([1, 1, 5, 3, 9, 9, 3, 3])
    folders = [str(i) for i in range(10)]
    pred = evaluation.Predictions(y_true, y_pred, np.zeros((8, 10)), folders, [f"f{i}" for i in range(8)])
    lines = evaluation.insights(pred)
    confused = next(line for line in lines if line.startswith("Most confused"))
    assert "“8” taken for “1” twice" in confused and "“1” taken for “5” once" in confused
    assert "“9” taken for “3” once" in confused
    spread = next(line for line in lines if line.startswith("Per-class accuracy"))
    assert "(class “1”)" in spread or "(class “8”)" in spread


def test_a_sample_of_requests_is_judged_against_its_sampling_noise():
    from helpers import evaluation

    lo, hi = evaluation.wilson_interval(45, 48)
    assert 0.82 < lo < 0.84 and 0.97 < hi < 0.99
    line = evaluation.sample_insight(45, 48, 0.88, 360)
    assert "45 of 48 requests (94%; 95% interval 83%-98%)" in line and "within its sampling noise" in line
    assert "outside the sample's interval" in evaluation.sample_insight(45, 48, 0.60)
