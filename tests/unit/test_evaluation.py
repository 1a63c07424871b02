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
