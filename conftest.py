"""Session-wide test setup, shared by tests/ and the nbval run over notebooks/."""

import os
import shutil
import tempfile

import pytest

# The work folder this test session made for itself (None when the caller chose one with SAGEBOOK_WORK_DIR).
_OWN_WORK_DIR: str | None = None
_SESSION_PASSED = False


def pytest_configure(config):
    global _OWN_WORK_DIR
    os.environ.setdefault("MPLBACKEND", "Agg")
    # Notebook kernels inherit the environment: keep every test run's datasets and manifest out of .work/.
    if "SAGEBOOK_WORK_DIR" not in os.environ:
        _OWN_WORK_DIR = tempfile.mkdtemp(prefix="sagebook-tests-")
        os.environ["SAGEBOOK_WORK_DIR"] = _OWN_WORK_DIR


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session, exitstatus):
    global _SESSION_PASSED
    _SESSION_PASSED = exitstatus == 0


def pytest_unconfigure(config):
    """Stop what a notebook run left running, then remove the session's work folder if every test passed.

    A full run writes about 2 GB of jobs, checkpoints and artifacts there; left behind, a few runs fill a disk.
    A failed run keeps it, and says where, for the post-mortem.
    """
    work = os.environ.get("SAGEBOOK_WORK_DIR")
    if work and os.path.isdir(work):
        try:
            from helpers.config import RunConfig
            from helpers.session import teardown

            teardown(RunConfig(work_dir=work))
        except Exception as e:  # noqa: BLE001 - cleanup must not turn a green run red
            print(f"endpoint cleanup failed: {e}")
    if _OWN_WORK_DIR and os.path.isdir(_OWN_WORK_DIR):
        if _SESSION_PASSED:
            shutil.rmtree(_OWN_WORK_DIR, ignore_errors=True)
        else:
            print(f"\nThe test session's work folder is kept for inspection: {_OWN_WORK_DIR}")
