import urllib.error

import pytest
import torch
from torch import nn

from helpers.runtime import models
from helpers.config import BACKBONES
from helpers.runtime.models import ModelConfig, ModelError, WeightsUnavailable


def test_head_sized_to_the_dataset():
    m = models.build_model(ModelConfig("resnet18", num_classes=7))
    assert isinstance(m.head, nn.Linear) and m.head.out_features == 7 and m.head.in_features == 512
    assert isinstance(m.body.fc, nn.Identity)
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_mlp_head_and_freezing():
    m = models.build_model(ModelConfig("mobilenet_v3_small", num_classes=3, head="mlp", hidden=32, dropout=0.3))
    assert [type(x) for x in m.head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert not any(p.requires_grad for p in m.body.parameters())
    assert all(p.requires_grad for p in m.head.parameters())
    m.train()
    assert not m.body.training and m.head.training  # frozen BatchNorm statistics stay fixed
    free = models.build_model(ModelConfig("mobilenet_v3_small", num_classes=3), freeze_backbone=False)
    assert all(p.requires_grad for p in free.body.parameters())
    free.train()
    assert free.body.training


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_builds_with_a_new_head(backbone):
    m = models.build_model(ModelConfig(backbone, num_classes=5))
    assert m.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_unknown_backbone_and_bad_config():
    with pytest.raises(ModelError, match="resnet18, resnet34"):
        ModelConfig("resnet1000", num_classes=3)
    with pytest.raises(ModelError, match="at least 2"):
        ModelConfig("resnet18", num_classes=1)
    with pytest.raises(ModelError, match="head"):
        ModelConfig("resnet18", num_classes=2, head="transformer")


def test_offline_default_weights_name_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailable) as e:
        models.build_body("resnet18", "DEFAULT")
    msg = str(e.value)
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg
    assert "weights=none" in msg


def test_default_weights_come_from_torchvisions_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from torchvision.models import resnet18

    ref = resnet18()
    url, cached = models.weights_file("resnet18")
    cached.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), cached)
    body, n = models.build_body("resnet18", "DEFAULT")
    assert n == 512 and torch.equal(body.conv1.weight, ref.conv1.weight)


def test_local_weights_file(tmp_path):
    from torchvision.models import mobilenet_v3_small, resnet18

    ref = resnet18()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    body, _ = models.build_body("resnet18", str(tmp_path / "r18.pth"))
    assert torch.equal(body.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    torch.save(mobilenet_v3_small().state_dict(), tmp_path / "mnv3.pth")
    with pytest.raises(ModelError, match="do not fit a resnet18"):
        models.build_body("resnet18", str(tmp_path / "mnv3.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="Cannot read weights file"):
        models.build_body("resnet18", str(tmp_path / "junk.pth"))


def test_save_and_load_round_trip(tmp_path):
    cfg = ModelConfig("resnet18", num_classes=3, class_names=["001.A", "002.B", "003.C"])
    m = models.build_model(cfg).eval()
    models.save_model(m, cfg, tmp_path / "model")
    loaded, cfg2 = models.load_model(tmp_path / "model")
    assert cfg2 == cfg
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(m(x), loaded(x))
    (tmp_path / "model" / "model.pth").unlink()
    with pytest.raises(ModelError, match="lacks model.pth"):
        models.load_model(tmp_path / "model")
