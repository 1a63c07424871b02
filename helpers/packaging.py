"""What is shipped to SageMaker: the training ``source_dir`` and the model artifact.

The source directory is the runtime bundle (:mod:`helpers.runtime.bundle`: ``helpers/runtime/`` whole,
with the entry scripts at the root) and a ``requirements.txt`` whose versions come from
``constraints.txt``, so the container gets the packages the tests ran with. The training job writes
the same bundle into its model folder as ``code/``.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from helpers.runtime.bundle import write_bundle
from helpers.runtime.catalog import BACKBONE_REQUIREMENTS

ROOT = Path(__file__).resolve().parent.parent

#: Packages the SageMaker PyTorch training container lacks (torch and torchvision are the container's own).
TRAIN_REQUIREMENTS = ("tqdm", "psutil", "nvidia-ml-py")
#: ... and those of the job's backbone (timm and the packaged weights for EfficientNet-Lite0):
#: ``helpers.runtime.catalog.BACKBONE_REQUIREMENTS``.
#: Only for a job that registers the Debugger hook: smdebug builds ``pyinstrument-cext`` from source and
#: pins an old protobuf, minutes and a downgrade that a tuning trial does not need.
DEBUGGER_REQUIREMENTS = ("smdebug",)
#: Only for a job that tracks: MLflow's client (``sagemaker-mlflow`` signs requests to a managed tracking
#: server's ARN) and TensorBoard's event writer.
TRACKING_REQUIREMENTS = ("mlflow-skinny", "sagemaker-mlflow", "tensorboard")


def pinned(packages: tuple[str, ...]) -> list[str]:
    """``name==version`` lines for ``packages`` from constraints.txt (bare names where it is absent)."""
    constraints = ROOT / "constraints.txt"
    versions = {}
    if constraints.is_file():
        for line in constraints.read_text().splitlines():
            if "==" in line and not line.startswith("#"):
                name, _, version = line.partition("==")
                versions[name.strip().lower().replace("_", "-")] = version.strip()
    return [f"{p}=={versions[p]}" if p in versions else p for p in packages]


def stage_source_dir(dest: str | os.PathLike[str], debugger: bool = True, tracking: bool = False,
                     backbone: str = "") -> Path:
    """The training ``source_dir``: ``train.py`` at its root, the runtime bundle, ``requirements.txt``
    (with smdebug only when the job runs the ``debugger``, MLflow and TensorBoard only when it is ``tracking``,
    and what the ``backbone`` needs besides torchvision)."""
    return write_bundle(dest, pinned(TRAIN_REQUIREMENTS + BACKBONE_REQUIREMENTS.get(backbone, ())
                                     + (DEBUGGER_REQUIREMENTS if debugger else ())
                                     + (TRACKING_REQUIREMENTS if tracking else ())))


def package_model(model_dir: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """``model.tar.gz`` with ``model.pth``, ``model_config.json`` and ``code/`` at its root."""
    model_dir, dest = Path(model_dir), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for item in sorted(model_dir.iterdir()):
            if not item.name.startswith("."):
                tar.add(item, arcname=item.name)
    os.replace(tmp, dest)
    return dest
