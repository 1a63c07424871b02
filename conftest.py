"""Session-wide test setup, shared by tests/ and the nbval run over notebooks/."""

import os
import tempfile

import pytest


def pytest_configure(config):
    os.environ.setdefault("MPLBACKEND", "Agg")
    # Notebook kernels inherit the environment: keep every test run's datasets and manifest out of .work/.
    if "SAGEBOOK_WORK_DIR" not in os.environ:
        os.environ["SAGEBOOK_WORK_DIR"] = tempfile.mkdtemp(prefix="sagebook-tests-")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config):
    """Stop the endpoint and the local SageMaker a notebook run (nbval) left running for the next chapter."""
    work = os.environ.get("SAGEBOOK_WORK_DIR")
    if work and os.path.isdir(work):
        try:
            from helpers.config import RunConfig
            from helpers.session import teardown

            teardown(RunConfig(work_dir=work))
        except Exception as e:  # noqa: BLE001 - cleanup must not turn a green run red
            print(f"endpoint cleanup failed: {e}")
