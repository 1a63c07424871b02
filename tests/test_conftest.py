"""The test session cleans up after itself: a full run writes gigabytes into its work folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = "tests/unit/test_config.py::test_unknown_backbone_lists_the_choices"


def _session(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[Path]]:
    env = {k: v for k, v in os.environ.items() if k != "SAGEBOOK_WORK_DIR"}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], check=False,
                          cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc, sorted(tmp_path.glob("sagebook-tests-*"))


@pytest.mark.slow
def test_a_passing_session_removes_its_work_folder(tmp_path):
    proc, left = _session(tmp_path, QUICK)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert left == []


@pytest.mark.slow
def test_a_failing_session_keeps_its_work_folder_and_says_where(tmp_path):
    proc, left = _session(tmp_path, QUICK + "_that_does_not_exist")
    assert proc.returncode != 0
    assert len(left) == 1
    assert str(left[0]) in proc.stdout
