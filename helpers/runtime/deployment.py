"""The inference handlers as a Ray Serve deployment, for AWS's Ray Serve container (``deployment.py`` of the artifact).

The same functions as the PyTorch container's ``inference.py`` decode, validate and predict: each
replica loads the model once (``model_fn``); each request is decoded on its own (``input_fn``), so a
bad one fails alone with the same status and JSON as on the other container; the decoded requests
of many clients then run through the model together (``@serve.batch``). Batch size and wait time come
from the deployment's ``user_config`` (see :mod:`helpers.runtime.serve_settings`) and change without
a restart.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from helpers.runtime.serve_settings import DEPLOYMENT_NAME, ServeSettings

log = logging.getLogger(__name__)
DEFAULTS = ServeSettings()
ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"


@serve.deployment(name=DEPLOYMENT_NAME)
class Classifier:
    """One replica: the model, and requests batched across clients."""

    def __init__(self, model_dir: str) -> None:
        import torch

        from helpers.runtime import inference  # here, not at import: building the application needs no torch

        torch.set_num_threads(max(1, int(float(os.environ.get("OMP_NUM_THREADS") or 1))))
        self.inference = inference
        self.bundle = inference.model_fn(model_dir)
        self.replica = serve.get_replica_context().replica_id.unique_id

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray Serve calls this at start and whenever ``user_config`` changes."""
        settings = ServeSettings.from_dict({**DEFAULTS.user_config(), **(user_config or {})})
        self.predict.set_max_batch_size(settings.max_batch_size)
        self.predict.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    @serve.batch(max_batch_size=DEFAULTS.max_batch_size, batch_wait_timeout_s=DEFAULTS.batch_wait_timeout_s)
    async def predict(self, requests: list[dict[str, Any]]) -> list[tuple[Any, int]]:
        """One forward pass for the requests Ray Serve gathered; each gets its answer and the batch's size."""
        return [(p, len(requests)) for p in self.inference.predict_many(requests, self.bundle)]

    async def __call__(self, request: Request) -> Response:
        inference, data, error = self.inference, None, None
        try:
            body = await request.body()
            data = inference.input_fn(body, request.headers.get("content-type", ""))
            prediction, batch = await self.predict(data)
            out = inference.output_fn(prediction, request.headers.get("accept", inference.JSON))
            # which replica answered, in a batch of how many requests: the runtime returns it as CustomAttributes
            return Response(out, media_type=inference.JSON,
                            headers={ATTRIBUTES: f"replica={self.replica};batch={batch}"})
        except Exception as e:  # noqa: BLE001 - a failing request gets its status; the replica stays up
            if not isinstance(e, inference.InferenceError):
                log.exception("inference failed")
            error = e
            status, body = inference.error_response(e)
            return Response(body, status_code=status, media_type=inference.JSON)
        finally:
            inference.release_memory(data, error)


def build(model_dir: str | os.PathLike[str]) -> Any:
    """The application ``config.yaml`` names: the deployment bound to the model folder."""
    return Classifier.bind(str(Path(model_dir)))
