import dataclasses
import json
import os
from pathlib import Path

import pytest

from helpers.config import BACKBONES, DATASETS, ConfigError, RunConfig, default_work_dir


def test_defaults_are_valid_and_resolve_work_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SAGEBOOK_WORK_DIR", str(tmp_path / "w"))
    cfg = RunConfig()
    assert cfg.dataset == "digits" and cfg.backend == "local"
    assert cfg.work_path == (tmp_path / "w").resolve()


def test_default_work_dir_is_in_the_checkout_without_env(monkeypatch):
    monkeypatch.delenv("SAGEBOOK_WORK_DIR", raising=False)
    monkeypatch.chdir(Path(__file__).parents[2] / "notebooks")
    assert default_work_dir() == Path(__file__).parents[2] / ".work"


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ConfigError) as e:
        RunConfig(backbone="resnet5O")
    msg = str(e.value)
    assert "resnet5O" in msg
    assert all(name in msg for name in BACKBONES)


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(ConfigError) as e:
        RunConfig(dataset="imagenet-please")
    assert all(name in str(e.value) for name in DATASETS)
    assert "s3://" in str(e.value)


@pytest.mark.parametrize("dataset", ["https://example.org/x.zip", "http://127.0.0.1:1/d.zip", "s3://bucket/prefix"])
def test_remote_sources_are_accepted(dataset):
    assert RunConfig(dataset=dataset).dataset == dataset


def test_local_folder_dataset(tmp_path):
    assert RunConfig(dataset=str(tmp_path)).dataset == str(tmp_path)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        RunConfig(backbone="nope", backend="azure", image_size=3, weights="missing.pth")
    msg = str(e.value)
    for part in ("backbone", "backend", "image_size", "weights"):
        assert part in msg


def test_sagemaker_backend_needs_an_s3_prefix():
    with pytest.raises(ConfigError, match="s3_prefix"):
        RunConfig(backend="sagemaker")
    assert RunConfig(backend="sagemaker", s3_prefix="s3://b/p").backend == "sagemaker"
    with pytest.raises(ConfigError, match="s3://bucket"):
        RunConfig(s3_prefix="bucket/p")


def test_local_weights_file(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    assert RunConfig(weights=str(f)).weights == str(f)


def test_frozen():
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.backbone = "vgg19"  # type: ignore[misc]


def test_json_round_trip():
    cfg = RunConfig(backbone="mobilenet_v3_small", image_size=96, seed=7)
    again = RunConfig.from_json(cfg.to_json())
    assert again == cfg
    assert json.loads(cfg.to_json())["backbone"] == "mobilenet_v3_small"


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="learning_rate"):
        RunConfig.from_dict({"learning_rate": 0.1})


def test_replace_validates_again():
    cfg = RunConfig()
    assert cfg.replace(backbone="vgg19").backbone == "vgg19"
    with pytest.raises(ConfigError):
        cfg.replace(backbone="vgg20")


def test_from_mapping_picks_the_fields():
    ns = {"dataset": "synthetic", "backbone": "vgg11", "In": [], "something_else": 1}
    cfg = RunConfig.from_mapping(ns)
    assert (cfg.dataset, cfg.backbone) == ("synthetic", "vgg11")


def test_image_size_zero_picks_a_size_for_the_dataset(tmp_path):
    assert RunConfig(dataset="digits").image_size == 64
    assert RunConfig(dataset="dogImages").image_size == 224
    assert RunConfig(dataset=str(tmp_path), image_size=160).image_size == 160
    with pytest.raises(ConfigError, match="image_size"):
        RunConfig(image_size=8)


def test_temporary_environ_sets_unsets_and_restores(monkeypatch):
    from helpers.config import temporary_environ

    monkeypatch.setenv("SAGEBOOK_A", "old")
    monkeypatch.delenv("SAGEBOOK_B", raising=False)
    with temporary_environ(SAGEBOOK_A=None, SAGEBOOK_B="new"):
        assert "SAGEBOOK_A" not in os.environ and os.environ["SAGEBOOK_B"] == "new"
    assert os.environ["SAGEBOOK_A"] == "old" and "SAGEBOOK_B" not in os.environ
