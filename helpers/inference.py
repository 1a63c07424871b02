"""SageMaker PyTorch inference handler (``code/inference.py`` of the model artifact).

The serving container calls ``model_fn(model_dir)`` once, then for each request
``input_fn(body, content_type)`` -> ``predict_fn(data, model)`` -> ``output_fn(prediction, accept)``.
The model is rebuilt from ``model_config.json`` + ``model.pth`` with the same eval preset as training;
nothing is downloaded at start-up and no URL in a request is ever fetched.
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch

from helpers.layout import display_name
from helpers.models import load_model
from helpers.presets import Preprocessing, eval_transform

TOP_K = 3
IMAGE_TYPES = ("image/jpeg", "image/png", "application/x-image")


def model_fn(model_dir: str) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg = load_model(model_dir, device)
    return {"model": model, "config": cfg, "device": device,
            "transform": eval_transform(Preprocessing.from_dict(cfg.preprocessing))}


def input_fn(body: bytes, content_type: str) -> list[bytes]:
    if content_type.split(";")[0].strip() not in IMAGE_TYPES:
        raise ValueError(f"unsupported content type {content_type!r}; send one of {', '.join(IMAGE_TYPES)}")
    return [bytes(body)]


@torch.no_grad()
def predict_fn(images: list[bytes], bundle: dict[str, Any]) -> list[list[dict[str, Any]]]:
    from PIL import Image

    batch = []
    for raw in images:
        with Image.open(io.BytesIO(raw)) as im:
            batch.append(bundle["transform"](im))
    probs = torch.softmax(bundle["model"](torch.stack(batch).to(bundle["device"])), dim=1).cpu()
    names = bundle["config"].class_names
    k = min(TOP_K, probs.shape[1])
    top = probs.topk(k, dim=1)
    return [[{"index": int(i), "label": display_name(names[i]) if names else str(int(i)), "probability": float(p)}
             for p, i in zip(ps.tolist(), idx.tolist())] for ps, idx in zip(top.values, top.indices)]


def output_fn(prediction: list[list[dict[str, Any]]], accept: str = "application/json") -> str:
    return json.dumps({"predictions": [{"top_k": p} for p in prediction]})
