"""SageMaker PyTorch inference handler (``code/inference.py`` of the model artifact).

The serving container calls ``model_fn(model_dir)`` once, then for each request
``input_fn(body, content_type)`` -> ``predict_fn(data, model)`` -> ``output_fn(prediction, accept)``.
The model is rebuilt from ``model_config.json`` + ``model.pth`` (``torch.load(weights_only=True)``)
with the same eval preset as training. Nothing is downloaded at start-up, and a URL in a request is
never fetched (that would let callers make the endpoint request arbitrary addresses).

Request content types:

- ``image/jpeg``, ``image/png``, ``application/x-image``: one image, the raw file bytes;
- ``application/x-npy``: a batch, one ``.npy`` array of uint8 pixels shaped ``(N, H, W, 3)``,
  ``(N, H, W)`` or ``(H, W, 3)`` (loaded with ``allow_pickle=False``);
- ``application/json``: ``{"instances": [{"b64": "<base64 image file>"}, ...], "top_k": 3}``.

Response (``application/json``), one entry per image, classes best first::

    {"predictions": [{"top_k": [{"index": 4, "class": "005.Akita", "label": "Akita",
                                 "probability": 0.91}, ...]}]}

``index`` is the 0-based label the model was trained with; ``label`` drops the folder's number.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from typing import Any

import numpy as np
import torch

from helpers.runtime.layout import display_name
from helpers.runtime.models import load_model
from helpers.runtime.presets import Preprocessing, eval_transform, to_rgb

TOP_K = 3
MAX_TOP_K = 20
MAX_BATCH = 64
MAX_PIXELS = 40_000_000  # per image: larger ones are refused (decompression bombs)
MAX_REQUEST_PIXELS = 60_000_000  # per request, all its images together, checked before each one is decoded
MAX_REQUEST_DECODED_BYTES = 400_000_000  # the same for the memory decoding takes (16-bit images take more)
TRIM_AFTER_BYTES = 32 * 1024 * 1024  # a request that decoded more gives the memory back afterwards
#: Bytes per pixel while decoding, by PIL mode (the source image, then its RGB copy of 3 bytes a pixel).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "RGB": 3,
               "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4}
IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")
NPY = "application/x-npy"
JSON = "application/json"
CONTENT_TYPES = IMAGE_TYPES + (NPY, JSON)

try:  # in SageMaker's serving container the toolkit turns these into HTTP statuses
    from sagemaker_inference.errors import BaseInferenceToolkitError as _ToolkitError
except ImportError:  # pragma: no cover - the toolkit is optional outside the container
    class _ToolkitError(Exception):  # type: ignore[no-redef]
        def __init__(self, status_code: int, message: str, phrase: str) -> None:
            super().__init__(message)
            self.status_code, self.message, self.phrase = status_code, message, phrase


class InferenceError(_ToolkitError):
    """A request the handler refuses; ``status_code`` is the HTTP status to answer with."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(status_code, message, message)
        self.status_code = status_code
        self.message = message
        self.decoded_bytes = 0  # what the request had decoded when it was refused (see release_memory)

    def __str__(self) -> str:
        return self.message


def model_fn(model_dir: str) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg = load_model(model_dir, device)
    # channels-last, as training runs: EfficientNet-Lite0 at 64 px, one thread, 8.0 -> 5.9 ms an image alone and
    # 2.9 -> 2.0 ms in a batch of 16 (the same float32 numbers, in the layout oneDNN and cuDNN prefer)
    model = model.to(memory_format=torch.channels_last)
    return {"model": model, "config": cfg, "device": device,
            "transform": eval_transform(Preprocessing.from_dict(cfg.preprocessing))}


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


class _Budget:
    """What one request may decode, spent image by image before each is decoded."""

    def __init__(self) -> None:
        self.pixels = 0
        self.bytes = 0

    def spend(self, width: int, height: int, mode: str, index: int) -> None:
        pixels = width * height
        nbytes = pixels * (_MODE_BYTES.get(mode, 4) + 3)
        if self.pixels + pixels > MAX_REQUEST_PIXELS or self.bytes + nbytes > MAX_REQUEST_DECODED_BYTES:
            raise InferenceError(413, f"Image {index} would take the request past its decoding budget of "
                                      f"{MAX_REQUEST_PIXELS:,} pixels ({MAX_REQUEST_DECODED_BYTES // 10**6} MB) "
                                      "for all its images together; send fewer or smaller images per request.")
        self.pixels += pixels
        self.bytes += nbytes


def _open_image(raw: bytes, budget: _Budget | None = None, index: int = 0) -> Any:
    """A decoded RGB image, or InferenceError (never a PIL traceback)."""
    from PIL import Image

    if not raw:
        raise InferenceError(400, "The request body is empty: send the image bytes.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:  # reads the header only: size and mode, nothing decoded
                if im.size[0] * im.size[1] > MAX_PIXELS:
                    raise InferenceError(413, f"The image is {im.size[0]}x{im.size[1]} pixels; the limit is "
                                              f"{MAX_PIXELS:,} pixels.")
                (budget or _Budget()).spend(im.size[0], im.size[1], im.mode, index)
                rgb = to_rgb(im)  # 16-bit images scaled, not clipped: the one preprocessing path
                return rgb.copy() if rgb is im else rgb  # outlives the file, which the block closes
    except InferenceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InferenceError(413, "The image has too many pixels (a decompression bomb?); it was refused.") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for undecodable data
        raise InferenceError(400, f"The body is not a decodable image ({type(e).__name__}).") from None


def input_fn(body: bytes | str, content_type: str) -> dict[str, Any]:
    """Decode a request into ``{"images": [PIL images], "top_k": k}``."""
    media = _media_type(content_type)
    if isinstance(body, str):
        body = body.encode("utf-8")
    budget = _Budget()
    try:
        if media in IMAGE_TYPES:
            data = {"images": [_open_image(bytes(body), budget)], "top_k": TOP_K}
        elif media == NPY:
            data = {"images": _npy_images(bytes(body), budget), "top_k": TOP_K}
        elif media == JSON:
            data = _json_request(bytes(body), budget)
        else:
            raise InferenceError(415, f"Unsupported content type {content_type!r}; send one of "
                                      f"{', '.join(CONTENT_TYPES)}.")
    except InferenceError as e:  # refused part-way (the budget, a bad image after good ones): the images decoded
        e.decoded_bytes = budget.bytes  # so far go with the frames that held them, and the caller trims
        raise e.with_traceback(None) from None
    data["decoded_bytes"] = budget.bytes
    return data


def _npy_images(body: bytes, budget: _Budget) -> list[Any]:
    from PIL import Image

    if not body:
        raise InferenceError(400, "The request body is empty: send a .npy array.")
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - malformed .npy data
        raise InferenceError(400, f"The body is not a .npy array ({type(e).__name__}).") from None
    if arr.ndim == 3 and arr.shape[-1] in (1, 3):
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] != 3) or arr.dtype != np.uint8:
        raise InferenceError(400, f"Expected uint8 pixels shaped (N, H, W, 3), (N, H, W) or (H, W, 3); got "
                                  f"{arr.dtype} {arr.shape}.")
    if arr.size == 0:
        raise InferenceError(400, f"The array {arr.shape} holds no pixels: send at least one non-empty image.")
    if len(arr) > MAX_BATCH or arr[0].size > 3 * MAX_PIXELS:
        raise InferenceError(413, f"At most {MAX_BATCH} images of {MAX_PIXELS:,} pixels per request.")
    images = []
    for i, a in enumerate(arr):
        budget.spend(a.shape[1], a.shape[0], "L" if a.ndim == 2 else "RGB", i)
        images.append(Image.fromarray(a).convert("RGB"))
    return images


def _json_request(body: bytes, budget: _Budget) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InferenceError(400, "The body is not valid JSON.") from None
    except RecursionError:  # a few KB of nested brackets: the client's mistake (or an attack), not a 500
        raise InferenceError(400, "The JSON body is nested too deeply.") from None
    instances = doc.get("instances") if isinstance(doc, dict) else None
    if not isinstance(instances, list) or not instances:
        raise InferenceError(400, 'Expected {"instances": [{"b64": "<base64 image>"}, ...]}.')
    if len(instances) > MAX_BATCH:
        raise InferenceError(413, f"At most {MAX_BATCH} instances per request.")
    images = []
    for i, inst in enumerate(instances):
        if isinstance(inst, dict) and any(k in inst for k in ("url", "uri", "s3")):
            raise InferenceError(400, f"instances[{i}] names a URL: the endpoint never fetches URLs; send the "
                                      "image bytes base64-encoded in 'b64'.")
        if not isinstance(inst, dict) or not isinstance(inst.get("b64"), str):
            raise InferenceError(400, f'instances[{i}] must be {{"b64": "<base64 image>"}}.')
        try:
            raw = base64.b64decode(inst["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise InferenceError(400, f"instances[{i}].b64 is not valid base64.") from None
        images.append(_open_image(raw, budget, i))
    top_k = doc.get("top_k", TOP_K)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= MAX_TOP_K:
        raise InferenceError(400, f"top_k must be an integer from 1 to {MAX_TOP_K}.")
    return {"images": images, "top_k": top_k}


@torch.no_grad()
def predict_fn(data: dict[str, Any], bundle: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Top-k classes with probabilities for each image."""
    return predict_many([data], bundle)[0]


@torch.no_grad()
def predict_many(requests: list[dict[str, Any]], bundle: dict[str, Any]) -> list[list[list[dict[str, Any]]]]:
    """:func:`predict_fn` for several decoded requests in one forward pass (what a batching server calls)."""
    images = [im for data in requests for im in data["images"]]
    batch = torch.stack([bundle["transform"](im) for im in images]).to(bundle["device"])
    batch = batch.contiguous(memory_format=torch.channels_last)
    probs = torch.softmax(bundle["model"](batch).float(), dim=1).cpu()
    folders = bundle["config"].class_names or [str(i) for i in range(probs.shape[1])]
    out, start = [], 0
    for data in requests:
        part = probs[start:start + len(data["images"])]
        start += len(data["images"])
        top = part.topk(min(data.get("top_k", TOP_K), probs.shape[1]), dim=1)
        out.append([[{"index": int(i), "class": folders[i], "label": display_name(folders[i]), "probability": float(p)}
                     for p, i in zip(ps.tolist(), idx.tolist())] for ps, idx in zip(top.values, top.indices)])
    return out


def output_fn(prediction: list[list[dict[str, Any]]], accept: str = JSON) -> str:
    if _media_type(accept) not in ("", "*/*", JSON):
        raise InferenceError(406, f"Unsupported Accept {accept!r}; the endpoint answers application/json.")
    return json.dumps({"predictions": [{"top_k": p} for p in prediction]})


def failure(exc: BaseException) -> tuple[int, str]:
    """The status and message a failed request is answered with: the handler's own, or 500 for the unexpected."""
    if isinstance(exc, InferenceError):
        return exc.status_code, exc.message
    return 500, f"Inference failed: {type(exc).__name__}: {exc}"


def error_response(exc: BaseException) -> tuple[int, str]:
    """The status and JSON body a server answers a failed request with; the same on every container."""
    status, message = failure(exc)
    return status, json.dumps({"message": message})


def release_memory(data: dict[str, Any] | None, error: BaseException | None = None) -> None:
    """Give the memory of a large request back to the system (glibc keeps freed blocks otherwise): a request
    that decoded more than :data:`TRIM_AFTER_BYTES`, answered (``data``) or refused part-way (``error``)."""
    decoded = data.get("decoded_bytes", 0) if data else getattr(error, "decoded_bytes", 0)
    if decoded < TRIM_AFTER_BYTES:
        return
    if data:
        data.clear()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
