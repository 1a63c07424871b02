"""Session-wide test setup, shared by tests/ and the nbval run over notebooks/."""

import os
import tempfile

import pytest


def pytest_configure(config):
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    # Notebook kernels inherit the environment: keep every test run's datasets and manifest out of .work/.
    if "SAGEBOOK_WORK_DIR" not in os.environ:
        os.environ["SAGEBOOK_WORK_DIR"] = tempfile.mkdtemp(prefix="sagebook-tests-")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config):
    """Stop an endpoint a notebook run (nbval) left running for the next chapter."""
    work = os.environ.get("SAGEBOOK_WORK_DIR")
    if work and os.path.isfile(os.path.join(work, "manifest.json")):
        try:
            from helpers.deploy import teardown_recorded
            from helpers.manifest import Manifest

            teardown_recorded(Manifest.load(work).get("endpoint"))
        except Exception as e:  # noqa: BLE001 - cleanup must not turn a green run red
            print(f"endpoint cleanup failed: {e}")
