"""The training runtime under a newer NumPy than ours, as in a training image whose NumPy is not pinned."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import numpy as np, torch
from torch import nn
from smdebug.trials import create_trial
from helpers.runtime import debugger
from helpers.runtime.debugger import Instrumentation

assert not hasattr(np.ndarray, "tostring"), np.__version__  # the NumPy that removed it
model, crit = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), nn.CrossEntropyLoss()
hook = debugger.make_hook(OUT, model, crit, Instrumentation(debugger=True, train_save_interval=1),
                          frozen_body=False)
debugger.train_mode(hook)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    out = model(x)
    loss = crit(out, y)
    debugger.save_batch(hook, y, out)
    opt.zero_grad()
    loss.backward()
    opt.step()
hook.close()
trial = create_trial(OUT)
losses = trial.tensor("CrossEntropyLoss_output_0")
assert losses.steps() == [0, 1, 2], losses.steps()
assert np.isfinite(losses.value(2)) and trial.tensor("labels").value(0).shape == (16,)
print("numpy", np.__version__, "weights", len(trial.tensor_names(collection="weights")))
"""


def test_the_hook_saves_and_reads_tensors_under_numpy_2_3(tmp_path):
    """A throwaway venv with NumPy 2.3 first on its path and this project's packages after it."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--target", str(site), "numpy>=2.3,<2.4"], check=True)
    (site / "sagebook.pth").write_text(f"{sysconfig.get_path('purelib')}\n{ROOT}\n")  # after the venv's own NumPy
    script = f"OUT = {str(tmp_path / 'tensors')!r}\n{SCRIPT}"
    done = subprocess.run([str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1].startswith("numpy 2.3."), done.stdout
