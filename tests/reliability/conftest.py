"""Every test here is a fault or abuse test: `pytest -m reliability` runs these and the ones marked elsewhere."""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/reliability/" in str(item.fspath):
            item.add_marker(pytest.mark.reliability)
