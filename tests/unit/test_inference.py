import base64
import io
import json
import socket
import sys
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import evaluation
from helpers.runtime import inference
from helpers.runtime.inference import InferenceError


@pytest.fixture(scope="module")
def bundle(trained_model):
    return inference.model_fn(str(trained_model))


def answer(bundle, body, content_type, accept="application/json"):
    return json.loads(inference.output_fn(inference.predict_fn(inference.input_fn(body, content_type), bundle), accept))


def test_image_request_gives_top_k_labels(bundle, test_image):
    out = answer(bundle, test_image, "image/jpeg")
    top = out["predictions"][0]["top_k"]
    assert [t["index"] for t in top] and len(top) == 3
    assert {t["class"] for t in top} == {"001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier"}
    assert top[0]["label"] == "Afghan hound" and top[0]["index"] == 1  # 0-based, the training label
    probs = [t["probability"] for t in top]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)


def test_same_preprocessing_as_training(bundle, trained_model, synthetic_root):
    pred = evaluation.predict_split(trained_model, synthetic_root / "test")
    for path, probs in zip(pred.files[:4], pred.probabilities[:4]):
        top = answer(bundle, open(path, "rb").read(), "application/x-image")["predictions"][0]["top_k"][0]
        assert top["index"] == int(probs.argmax()) and top["probability"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_the_served_model_runs_channels_last_as_training_does(bundle):
    """The same float32 numbers (the test above), 1.4x faster on a CPU: oneDNN's preferred layout."""
    conv = next(p for p in bundle["model"].parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_npy_batch_and_json(bundle, test_image):
    px = np.asarray(Image.open(io.BytesIO(test_image)).convert("RGB"))
    buf = io.BytesIO()
    np.save(buf, np.stack([px, px, px]))
    assert len(answer(bundle, buf.getvalue(), "application/x-npy")["predictions"]) == 3
    doc = {"instances": [{"b64": base64.b64encode(test_image).decode()}] * 2, "top_k": 1}
    out = answer(bundle, json.dumps(doc), "application/json; charset=utf-8")
    assert [len(p["top_k"]) for p in out["predictions"]] == [1, 1]
    single = answer(bundle, test_image, "image/png")["predictions"][0]["top_k"][0]
    batched = out["predictions"][0]["top_k"][0]
    assert batched["index"] == single["index"] and batched["probability"] == pytest.approx(single["probability"])


def status_of(body, content_type):
    with pytest.raises(InferenceError) as e:
        inference.input_fn(body, content_type)
    return e.value.status_code, str(e.value)


def test_bad_requests_are_refused_with_a_status():
    assert status_of(b"a,b", "text/csv")[0] == 415
    assert status_of(b"", "image/jpeg")[0] == 400
    assert status_of(b"\x89PNG\r\n not really", "image/png")[0] == 400
    assert status_of(b"{nope", "application/json")[0] == 400
    assert status_of(json.dumps({"instances": [{"b64": "!!!"}]}).encode(), "application/json")[0] == 400
    assert status_of(json.dumps({"instances": [{"b64": ""}], "top_k": 99}).encode(), "application/json")[0] == 400
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert status_of(buf.getvalue(), "application/x-npy")[0] == 400  # pickles are never loaded


@pytest.mark.reliability
@pytest.mark.parametrize("shape", [(0, 32, 32, 3), (1, 0, 0, 3), (0, 0, 3)])
def test_empty_arrays_are_the_clients_mistake(shape):
    buf = io.BytesIO()
    np.save(buf, np.zeros(shape, dtype=np.uint8))
    status, message = status_of(buf.getvalue(), "application/x-npy")
    assert status == 400 and "no pixels" in message


@pytest.mark.reliability
def test_deeply_nested_json_is_the_clients_mistake():
    status, message = status_of(b"[" * 100_000 + b"]" * 100_000, "application/json")
    assert status == 400 and "nested too deeply" in message


@pytest.mark.reliability
def test_decompression_bomb_is_refused():
    bomb = io.BytesIO()
    Image.new("1", (8000, 6000)).save(bomb, "PNG")  # a few KB that would decode to 48 million pixels
    assert len(bomb.getvalue()) < 100_000
    code, message = status_of(bomb.getvalue(), "image/png")
    assert code == 413 and "pixels" in message


def test_urls_in_requests_are_never_fetched(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("the handler tried to open a connection")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    doc = {"instances": [{"url": "http://169.254.169.254/latest/meta-data/"}]}
    code, message = status_of(json.dumps(doc).encode(), "application/json")
    assert code == 400 and "never fetches URLs" in message


def test_model_fn_downloads_nothing(trained_model, monkeypatch):
    def no_download(*a, **k):
        raise AssertionError("model_fn tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    assert inference.model_fn(str(trained_model))["config"].num_classes == 3


class FakeContext:
    """The slice of the model server's context that sagemaker-inference's Transformer uses."""

    def __init__(self, model_dir, content_type, accept="application/json"):
        self.system_properties = {"model_dir": str(model_dir)}
        self.request_processor = [self]
        self.headers = {"Content-Type": content_type, "Accept": accept}
        self.status = None
        self.response_content_type = None

    def get_request_properties(self):
        return self.headers

    def set_response_content_type(self, idx, value):
        self.response_content_type = value

    def set_response_status(self, code, phrase):
        self.status = code


def test_the_toolkit_dispatch_gives_the_same_answer(trained_model, bundle, test_image, monkeypatch):
    from sagemaker_inference.default_inference_handler import DefaultInferenceHandler
    from sagemaker_inference.transformer import Transformer

    code_dir = trained_model / "code"
    monkeypatch.syspath_prepend(str(code_dir))  # what the serving container does with model/code
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "inference.py")
    for name in [m for m in sys.modules if m == "inference" or m == "helpers" or m.startswith("helpers.")]:
        monkeypatch.delitem(sys.modules, name)  # import the artifact's copy, as the container would
    transformer = Transformer(default_inference_handler=DefaultInferenceHandler())
    ctx = FakeContext(trained_model, "image/jpeg")
    [body] = transformer.transform([{"body": test_image}], ctx)
    assert ctx.status is None and ctx.response_content_type == "application/json"
    assert json.loads(body) == answer(bundle, test_image, "image/jpeg")
    assert sys.modules["inference"].__file__ == str(code_dir / "inference.py")
    bad = FakeContext(trained_model, "text/csv")
    transformer.transform([{"body": b"1,2"}], bad)
    assert bad.status == 415


def refused_by_the_budget(monkeypatch, mode: str, size: tuple[int, int], count: int) -> list:
    """Send ``count`` copies of a blank ``mode`` PNG of ``size`` in one JSON request, expect the budget's 413 at
    image 1; the (size, mode) of each image decoded before it."""
    import base64
    import io

    from PIL import Image

    from helpers.runtime import presets

    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    decoded = []
    real = presets.to_rgb
    monkeypatch.setattr(inference, "to_rgb", lambda im: decoded.append((im.size, im.mode)) or real(im))
    with pytest.raises(InferenceError) as e:
        inference.input_fn(json.dumps({"instances": [{"b64": b64}] * count}), "application/json")
    assert e.value.status_code == 413 and "Image 1 would take the request past its decoding budget" in e.value.message
    return decoded


@pytest.mark.reliability
def test_a_request_has_one_decoding_budget_for_all_its_images(monkeypatch):
    """40 images under the per-image limit still cannot make one request decode gigabytes: refused before
    the image that would pass the budget is decoded."""
    # 36 Mpx each: under MAX_PIXELS, about 35 KB; only the first is decoded
    assert refused_by_the_budget(monkeypatch, "L", (6000, 6000), 40) == [((6000, 6000), "L")]


@pytest.mark.reliability
def test_the_decoding_budget_counts_bytes_not_only_pixels(monkeypatch):
    """Two 30-megapixel RGBA images stay within the request's 60 Mpx but take 420 MB to decode (the source's 4
    bytes a pixel and the RGB copy's 3): the byte budget refuses the second before it is decoded."""
    assert 2 * 5000 * 6000 <= inference.MAX_REQUEST_PIXELS < 2 * 5000 * 6000 * 7 / 4  # the bytes decide, not pixels
    assert refused_by_the_budget(monkeypatch, "RGBA", (5000, 6000), 2) == [((5000, 6000), "RGBA")]


def test_error_responses_are_the_same_json_everywhere():
    assert inference.error_response(InferenceError(415, "no")) == (415, '{"message": "no"}')
    status, body = inference.error_response(RuntimeError("boom"))
    assert status == 500 and json.loads(body) == {"message": "Inference failed: RuntimeError: boom"}
