"""Insights render as wrapping Markdown lists; tables show numbers rounded to what matters."""

import math

import pandas as pd
import pytest

from helpers import present


def test_insights_are_a_markdown_list_with_code_kept_and_markup_escaped():
    md = present.bullet_markdown(["The best trial: `lr=0.01` *", "", "a <b>bold</b> claim_with_underscores | x"])
    assert md.splitlines() == ["- The best trial: `lr=0.01` \\*",
                               "- a \\<b\\>bold\\</b\\> claim\\_with\\_underscores \\| x"]
    assert present.bullets(["one"]).data == "- one"


@pytest.mark.parametrize("value, shown", [(0.647059, 0.647), (338.361708, 338.0), (12.3456, 12.3),
                                          (0.0012345, 0.00123), (-4.5678, -4.57), (2.0, 2.0), (0.0, 0.0)])
def test_numbers_keep_three_significant_digits(value, shown):
    assert present.number(value) == shown


def test_number_leaves_what_is_not_a_finite_float():
    assert present.number(7) == 7 and present.number("x") == "x" and math.isnan(present.number(float("nan")))


def test_tidy_rounds_drops_silent_columns_and_keeps_the_asked_ones():
    frame = pd.DataFrame({"setup": ["a", "b"], "p50_ms": [16.658826, 338.361708], "acc": [0.647059, 0.5],
                          "errors": [0, 0], "note": ["", None], "wrong": [0, 0], "big": [1234.5, float("nan")]})
    out = present.tidy(frame, keep=["wrong"])
    assert list(out.columns) == ["setup", "p50_ms", "acc", "wrong", "big"]
    assert out["p50_ms"].tolist() == ["16.7", "338"] and out["acc"].tolist() == ["0.647", "0.5"]
    assert out["big"].tolist() == ["1,234", ""] and out["wrong"].tolist() == [0, 0]
    assert frame["p50_ms"].iloc[0] == 16.658826  # a copy


def test_paths_under_the_work_folder_show_relative_to_it(tmp_path):
    from pathlib import Path

    work = tmp_path / "work"
    value = {"uri": f"sqlite:///{work}/mlflow/mlflow.db", "root": work / "datasets" / "digits", "self": str(work),
             "other": Path("/elsewhere/x"), "list": [f"log {work}/server.log, then {work}."], "sibling": f"{work}-2/x"}
    assert present.relative(value, work) == {
        "uri": "sqlite:///mlflow/mlflow.db", "root": Path("datasets/digits"), "self": ".",
        "other": Path("/elsewhere/x"), "list": ["log server.log, then .."], "sibling": f"{work}-2/x"}


def test_the_pages_log_goes_to_stdout_with_relative_paths(tmp_path, capsys):
    import logging

    present.log_to_page(tmp_path, logging.INFO)
    try:
        logging.getLogger("helpers.data").info("Synced %s to s3://b/p", tmp_path / "datasets" / "digits")
    finally:
        logging.basicConfig(force=True, handlers=[logging.NullHandler()])
    out, err = capsys.readouterr()
    assert out == "INFO helpers.data: Synced datasets/digits to s3://b/p\n" and err == ""


def test_a_nullable_integer_column_with_gaps_is_kept_and_an_empty_one_dropped():
    import pandas as pd

    frame = pd.DataFrame({"first step": pd.array([None, 368], dtype="Int64"),
                          "epoch": pd.array([None, None], dtype="Int64"), "status": ["ok", "fired"]})
    out = present.tidy(frame)
    assert list(out.columns) == ["first step", "status"] and out["first step"].iloc[1] == 368


def test_the_gaps_of_a_nullable_integer_column_read_empty():
    frame = pd.DataFrame({"epoch": pd.array([None, 3], dtype="Int64")})
    assert present.tidy(frame)["epoch"].tolist() == ["", 3]
