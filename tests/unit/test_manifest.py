import json
import os

import pytest

from helpers.runtime import fileio
from helpers.manifest import MANIFEST_NAME, Manifest, ManifestError, PrerequisiteMissing


def test_empty_then_recorded_and_reloaded(work_dir):
    m = Manifest.load(work_dir)
    assert m.get("data") is None
    m.record("data", {"dataset": "digits", "class_names": ["0", "1"]})
    again = Manifest.load(work_dir)
    assert again.get("data")["class_names"] == ["0", "1"]
    assert "recorded_at" in again.get("data")


def test_missing_prerequisite_names_the_chapter(work_dir):
    m = Manifest.load(work_dir)
    with pytest.raises(PrerequisiteMissing, match="run chapter 01_data first"):
        m.require("data")
    m.record("data", {"dataset": "digits"})
    with pytest.raises(PrerequisiteMissing, match="run chapter 02_hpo first"):
        m.require("hpo")
    with pytest.raises(PrerequisiteMissing, match="run chapter 03_debug_profile first"):
        m.require("model")


def test_require_checks_expected_values(work_dir):
    m = Manifest.load(work_dir)
    m.record("data", {"dataset": "digits"})
    assert m.require("data", dataset="digits")["dataset"] == "digits"
    with pytest.raises(PrerequisiteMissing, match="dataset='synthetic'"):
        m.require("data", dataset="synthetic")


def test_hand_off_chain_and_downstream_invalidation(work_dir):
    m = Manifest.load(work_dir)
    m.record("data", {"dataset": "digits"})
    m.record("hpo", {"lr": 0.01})
    m.record("model", {"artifact": "model.tar.gz"})
    m.record("endpoint", {"name": "ep"})
    assert list(Manifest.load(work_dir).stages) == ["data", "hpo", "model", "endpoint"]
    m.record("data", {"dataset": "synthetic"})
    again = Manifest.load(work_dir)
    assert list(again.stages) == ["data"]
    assert again.require("data")["dataset"] == "synthetic"


def test_clear(work_dir):
    m = Manifest.load(work_dir)
    m.record("data", {"dataset": "digits"})
    m.record("hpo", {"lr": 0.01})
    m.clear("hpo")
    assert list(Manifest.load(work_dir).stages) == ["data"]


def test_unknown_stage(work_dir):
    with pytest.raises(ValueError, match="stages are data, hpo, model, endpoint"):
        Manifest.load(work_dir).record("deploy", {})


@pytest.mark.reliability
def test_corrupt_manifest_is_a_clear_error(work_dir):
    (work_dir / MANIFEST_NAME).write_text('{"version": 1, "stages": {"data": ')
    with pytest.raises(ManifestError, match="Delete it and rerun"):
        Manifest.load(work_dir)


@pytest.mark.reliability
def test_crash_during_write_keeps_the_old_manifest(work_dir, monkeypatch):
    m = Manifest.load(work_dir)
    m.record("data", {"dataset": "digits"})
    before = (work_dir / MANIFEST_NAME).read_text()

    def crash(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(fileio.os, "fsync", crash)
    with pytest.raises(OSError, match="disk on fire"):
        m.record("hpo", {"lr": 0.1})
    assert (work_dir / MANIFEST_NAME).read_text() == before
    assert json.loads(before)["stages"].keys() == {"data"}
    assert sorted(os.listdir(work_dir)) == [MANIFEST_NAME]  # no temp file left behind
    assert m.get("hpo") is None  # memory matches disk


def test_summary_lists_every_stage(work_dir):
    m = Manifest.load(work_dir)
    m.record("data", {"dataset": "digits"})
    lines = m.summary().splitlines()
    assert len(lines) == 4 and "recorded" in lines[0] and "missing" in lines[1]
