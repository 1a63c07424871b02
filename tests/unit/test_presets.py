"""The preprocessing preset: one definition for training, the decoded-image cache and serving."""

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from helpers.runtime.presets import Preprocessing, decode_transform, eval_transform, normalize_transform


def photo(w=97, h=61, mode="RGB"):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)


def test_cached_halves_compose_to_the_eval_transform():
    p = Preprocessing.for_size(32)
    for mode in ("RGB", "L", "RGBA"):
        img = photo(mode=mode)
        decoded = decode_transform(p)(img)
        assert decoded.dtype == torch.uint8 and decoded.shape == (3, 32, 32)
        assert torch.equal(normalize_transform(p)(decoded), eval_transform(p)(img))


def test_batch_normalization_equals_per_image():
    p = Preprocessing.for_size(32)
    imgs = [decode_transform(p)(photo(w)) for w in (40, 50, 60)]
    batch = normalize_transform(p)(torch.stack(imgs))
    assert torch.equal(batch, torch.stack([normalize_transform(p)(i) for i in imgs]))


def test_same_numbers_as_torchvisions_classic_preset():
    p = Preprocessing.for_size(32)
    classic = T.Compose([T.Resize(p.resize_size, antialias=True), T.CenterCrop(32), T.ToTensor(),
                         T.Normalize(p.mean, p.std)])
    img = photo()
    assert torch.allclose(eval_transform(p)(img), classic(img), atol=1e-6)
