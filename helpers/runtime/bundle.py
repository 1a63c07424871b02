"""The runtime as it is shipped: ``helpers/runtime/`` whole, with the entry scripts at the root.

Layout of a bundle (a training ``source_dir``, or ``code/`` in ``model.tar.gz``)::

    train.py              runs helpers.runtime.train (SageMaker's sagemaker_program / entry_script)
    inference.py          the handlers of helpers.runtime.inference (the PyTorch serving container's)
    requirements.txt      what the container lacks, pinned
    helpers/__init__.py
    helpers/runtime/...   this folder, whole

The training job writes the same bundle into its model artifact (``code/``), so the model is served
by the code it was trained with, on either container::

    model.tar.gz
    ├── model.pth, model_config.json   the weights and how to rebuild the network
    ├── config.yaml, deployment.py     Ray Serve container: `serve run config.yaml` imports deployment:app
    └── code/                          PyTorch (TorchServe) container: code/inference.py; the Ray
        ├── inference.py               container puts code/ on PYTHONPATH, so deployment.py imports
        ├── requirements.txt           helpers.runtime from here too
        └── helpers/runtime/...
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

RUNTIME = Path(__file__).resolve().parent
REQUIREMENTS = "requirements.txt"

ENTRY_SCRIPTS = {
    "train.py": '''"""SageMaker training entry point: runs helpers.runtime.train, shipped beside this file."""
import sys

from helpers.runtime.train import main

if __name__ == "__main__":
    sys.exit(main())
''',
    "inference.py": '''"""SageMaker inference handlers (model_fn, input_fn, predict_fn, output_fn) from helpers.runtime.inference."""
from helpers.runtime.inference import input_fn, model_fn, output_fn, predict_fn  # noqa: F401
''',
}


def installed_requirements(backbone: str) -> list[str]:
    """What the serving container lacks for the inference handlers, pinned at the versions this job ran: the
    packages the backbone needs besides torch, torchvision and Pillow (the container's own), so for a torchvision
    backbone ``code/requirements.txt`` of a model artifact is empty."""
    from importlib.metadata import PackageNotFoundError, version

    from helpers.runtime.catalog import BACKBONE_REQUIREMENTS

    lines = []
    for package in BACKBONE_REQUIREMENTS.get(backbone, ()):
        try:
            lines.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            lines.append(package)
    return lines


def write_bundle(dest: str | os.PathLike[str], requirements: tuple[str, ...] | list[str] = ()) -> Path:
    """Write the bundle into ``dest`` (replaced if it exists), with these ``requirements.txt`` lines."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(RUNTIME, dest / "helpers" / "runtime", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / "helpers" / "__init__.py").write_text('"""sagebook helpers, as shipped: only the runtime."""\n')
    for name, text in ENTRY_SCRIPTS.items():
        (dest / name).write_text(text)
    (dest / REQUIREMENTS).write_text("".join(f"{line}\n" for line in requirements))
    return dest
