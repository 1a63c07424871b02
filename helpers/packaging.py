"""What is shipped to SageMaker: the training ``source_dir`` and the ``code/`` folder of a model artifact.

Both carry the entry script, the ``helpers`` modules it imports (and nothing else) and a
``requirements.txt`` whose versions come from ``constraints.txt``, so the container gets the
packages the tests ran with.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

HELPERS = Path(__file__).resolve().parent
ROOT = HELPERS.parent

#: helpers modules the training entry point imports (a test runs the staged copy in isolation).
TRAIN_MODULES = ("__init__", "config", "debugger", "fileio", "layout", "metrics", "models", "packaging", "presets",
                 "profiler", "progress", "train")
#: helpers modules the inference handler imports.
INFERENCE_MODULES = ("__init__", "config", "fileio", "layout", "models", "presets")
#: Packages the SageMaker PyTorch containers lack (torch and torchvision are the container's own).
TRAIN_REQUIREMENTS = ("tqdm", "smdebug", "psutil", "nvidia-ml-py")
INFERENCE_REQUIREMENTS = ()

TRAIN_SHIM = '''"""SageMaker training entry point: runs helpers.train, shipped beside this file."""
import sys

from helpers.train import main

if __name__ == "__main__":
    sys.exit(main())
'''


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


def _copy_modules(dest: Path, modules: tuple[str, ...]) -> None:
    pkg = dest / "helpers"
    pkg.mkdir(parents=True, exist_ok=True)
    for m in modules:
        shutil.copy2(HELPERS / f"{m}.py", pkg / f"{m}.py")


def stage_source_dir(dest: str | os.PathLike[str]) -> Path:
    """The training ``source_dir``: ``train.py`` + ``helpers/`` (only what it imports) + ``requirements.txt``."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    _copy_modules(dest, TRAIN_MODULES + ("inference",))  # train writes code/ into the model artifact
    (dest / "train.py").write_text(TRAIN_SHIM)
    (dest / "requirements.txt").write_text("\n".join(pinned(TRAIN_REQUIREMENTS)) + "\n")
    return dest


def stage_inference_code(dest: str | os.PathLike[str]) -> Path:
    """``code/`` of a PyTorch ``model.tar.gz``: ``inference.py`` + its helpers + ``requirements.txt``."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    _copy_modules(dest, INFERENCE_MODULES)
    src = HELPERS / "inference.py"
    shutil.copy2(src, dest / "inference.py")
    (dest / "requirements.txt").write_text("\n".join(pinned(INFERENCE_REQUIREMENTS)) + "\n")
    return dest


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
