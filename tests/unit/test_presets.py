"""The preprocessing preset: one definition for training, the decoded-image cache and serving."""

import numpy as np
import pytest
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


def sixteen_bit_png(tmp_path, name, top):
    """A 16-bit grey PNG: a horizontal ramp from 0 to ``top``."""
    import numpy as np
    from PIL import Image

    ramp = np.tile(np.linspace(0, top, 64).astype(np.uint16), (32, 1))
    path = tmp_path / name
    Image.fromarray(ramp).save(path)  # uint16: mode I;16
    return path


@pytest.mark.reliability
def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    """Pillow's convert('RGB') clips 16-bit values at 255: every such image would turn white and look alike."""
    import numpy as np
    from PIL import Image

    from helpers.runtime.presets import Preprocessing, eval_transform, to_rgb

    bright, dark = sixteen_bit_png(tmp_path, "bright.png", 65535), sixteen_bit_png(tmp_path, "dark.png", 20000)
    with Image.open(bright) as im:
        assert im.mode.startswith("I")
        assert np.asarray(im.convert("RGB")).mean() > 250  # the bug: all but the darkest columns clip to white
        rgb = np.asarray(to_rgb(im))
    assert rgb.shape == (32, 64, 3) and rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255
    assert (np.diff(rgb[0, :, 0].astype(int)) >= 0).all()  # the ramp survives
    with Image.open(dark) as im:
        assert np.asarray(to_rgb(im))[0, -1, 0] == round(20000 / 257)
    t = eval_transform(Preprocessing.for_size(32))
    with Image.open(bright) as a, Image.open(dark) as b:
        assert not np.allclose(t(a).numpy(), t(b).numpy())


@pytest.mark.reliability
def test_serving_decodes_sixteen_bit_images_the_same_way(tmp_path):
    import numpy as np

    from helpers.runtime import inference

    raw = sixteen_bit_png(tmp_path, "x.png", 65535).read_bytes()
    img = inference.input_fn(raw, "image/png")["images"][0]
    assert img.mode == "RGB" and np.asarray(img)[0, 0, 0] == 0 and np.asarray(img)[0, -1, 0] == 255
    assert np.asarray(img)[0, 16, 0] == round(16 / 63 * 255)  # clipped, it would be 255


@pytest.mark.reliability
def test_the_dataset_report_counts_high_bit_images(tmp_path):
    from helpers import data

    for split in ("train", "valid", "test"):
        for c in ("a", "b"):
            folder = tmp_path / "ds" / split / c
            folder.mkdir(parents=True)
            for i in range(2):
                sixteen_bit_png(folder, f"{i}.png", 65535 - i)
    text = "\n".join(data.insights(data.validate_dataset(tmp_path / "ds", progress=False)))
    assert "12 image(s) have more than 8 bits per sample (I;16)" in text and "scales them to 8 bits" in text
