"""Fixtures shared by the unit, integration and notebook tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.config import RunConfig
from helpers.data import make_synthetic


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


@pytest.fixture
def cfg(work_dir: Path) -> RunConfig:
    return RunConfig(dataset="synthetic", work_dir=str(work_dir), synthetic_classes=3, synthetic_images=10)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean 3-class synthetic ImageFolder, shared read-only by tests."""
    return make_synthetic(tmp_path_factory.mktemp("syn") / "ds", num_classes=3, images_per_class=10, seed=1)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> Path:
    """A tiny model trained on the synthetic set: the model folder of a training job."""
    from helpers.runtime.train import JobPaths, TrainConfig, fit

    base = tmp_path_factory.mktemp("trained")
    paths = JobPaths(synthetic_root / "train", synthetic_root / "valid", synthetic_root / "test",
                     base / "model", base / "output", None)
    fit(TrainConfig(image_size=32, batch_size=8, epochs=3, lr=0.01, num_workers=0), paths, emit=lambda line: None)
    return base / "model"


@pytest.fixture(scope="session")
def test_image(synthetic_root: Path) -> bytes:
    return sorted((synthetic_root / "test" / "002.Afghan_hound").iterdir())[0].read_bytes()


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region for moto: no test can reach a real account."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)  # moto intercepts calls that go to AWS, not elsewhere
