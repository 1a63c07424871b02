"""Local training jobs: the entry point in a subprocess with the SageMaker environment."""

import json
import subprocess
import sys

import pytest
import torch

from helpers import jobs, packaging
from helpers.runtime import metrics

HP = {"image_size": 32, "batch_size": 8, "epochs": 3, "lr": 0.01, "patience": 0}


def channels(root):
    return {"train": root / "train", "valid": root / "valid", "test": root / "test"}


@pytest.mark.slow
def test_local_job_runs_like_sagemaker(synthetic_root, tmp_path):
    lines = []
    r = jobs.run_local_job("job1", hyperparameters=HP, channels=channels(synthetic_root), jobs_dir=tmp_path,
                           echo=lines.append)
    assert r.status == "Completed" and r.exit_code == 0 and r.duration_s > 0
    saved = jobs.JobResult.load(tmp_path / "job1")
    assert saved.status == "Completed" and saved.hyperparameters == HP
    # the regexes that SageMaker would use read the real script output
    assert saved.metrics == metrics.parse_log((tmp_path / "job1" / "train.log").read_text())
    assert len(saved.metrics["train:loss"]) == 3 and len(saved.metrics["valid:accuracy"]) == 4  # + best
    out = json.loads((r.output_dir / "metrics.json").read_text())
    assert saved.final("test:accuracy") == pytest.approx(out["test"]["accuracy"], abs=1e-5)
    assert sorted(p.name for p in r.model_dir.iterdir()) == ["code", "model.pth", "model_config.json"]
    assert any('hosts ["algo-1"], current host algo-1' in line for line in lines)


@pytest.mark.slow
def test_failing_script_fails_the_job_with_its_log_tail(synthetic_root, tmp_path):
    with pytest.raises(jobs.JobFailed) as e:
        jobs.run_local_job("bad", hyperparameters={**HP, "lr": -1}, channels=channels(synthetic_root),
                           jobs_dir=tmp_path, echo=None)
    assert "lr must be a positive number" in str(e.value) and "exit code 2" in str(e.value)
    assert jobs.JobResult.load(tmp_path / "bad").status == "Failed"


@pytest.mark.slow
def test_killed_job_resumes_with_no_epoch_lost_or_repeated(synthetic_root, tmp_path):
    hp = {**HP, "epochs": 6, "freeze_backbone": False, "backbone": "mobilenet_v3_small"}

    class Kill(Exception):
        pass

    def kill_after_first_checkpoint(line):
        if line.startswith("checkpoint saved epoch=1"):
            raise Kill  # run_local_job kills the training process (SIGKILL) and records it as stopped

    with pytest.raises(Kill):
        jobs.run_local_job("spot", hyperparameters=hp, channels=channels(synthetic_root), jobs_dir=tmp_path,
                           echo=kill_after_first_checkpoint)
    assert jobs.JobResult.load(tmp_path / "spot").status == "Stopped"
    done = torch.load(tmp_path / "spot" / "checkpoints" / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= done < 6
    lines = []
    r = jobs.run_local_job("spot", hyperparameters=hp, channels=channels(synthetic_root), jobs_dir=tmp_path,
                           echo=lines.append)
    assert any(f"resuming from the checkpoint of epoch {done}" in line for line in lines)
    trained = [int(line.split("epoch=")[1]) for line in lines if line.startswith("checkpoint saved")]
    assert trained == list(range(done + 1, 7))
    history = json.loads((r.output_dir / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_two_process_ddp(synthetic_root, tmp_path):
    lines = []
    r = jobs.run_local_job("ddp", hyperparameters={**HP, "epochs": 2}, channels=channels(synthetic_root),
                           jobs_dir=tmp_path, instance_count=2, echo=lines.append)
    assert r.status == "Completed"
    assert any("rank 1 of 2" in line for line in lines) and any("rank 0 of 2" in line for line in lines)
    assert len(r.metrics["train:loss"]) == 2  # rank 0 alone prints metrics
    out = json.loads((r.output_dir / "metrics.json").read_text())
    assert out["valid"]["n"] == 6 and out["test"]["n"] == 6  # both ranks' shards summed


@pytest.mark.slow
def test_staged_source_dir_runs_alone_with_plain_flags(synthetic_root, tmp_path):
    src = packaging.stage_source_dir(tmp_path / "src")
    assert (src / "requirements.txt").read_text().startswith("tqdm==")
    cmd = [sys.executable, "train.py", "--data-dir", str(synthetic_root), "--model-dir", str(tmp_path / "model"),
           "--epochs", "1", "--image-size", "32", "--num-workers", "0"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no SM_* variables: a bare EC2 instance
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "#metrics split=test epoch=final" in proc.stdout
    check = subprocess.run([sys.executable, "-c", "import helpers.runtime.train, helpers; print(helpers.__file__)"],
                           cwd=src, env=env, capture_output=True, text=True)
    assert check.stdout.strip() == str(src / "helpers" / "__init__.py")  # the copy, not the checkout


@pytest.mark.slow
def test_a_completed_job_is_reused_unless_asked_to_rerun(synthetic_root, tmp_path):
    hp = {**HP, "epochs": 1}
    first = jobs.run_local_job("once", hyperparameters=hp, channels=channels(synthetic_root), jobs_dir=tmp_path,
                               echo=None)
    lines = []
    again = jobs.run_local_job("once", hyperparameters=hp, channels=channels(synthetic_root), jobs_dir=tmp_path,
                               echo=lines.append)
    assert lines == [] and again.started == first.started and again.metrics == first.metrics
    rerun = jobs.run_local_job("once", hyperparameters=hp, channels=channels(synthetic_root), jobs_dir=tmp_path,
                               echo=lines.append, rerun=True)
    assert lines and rerun.started >= first.started
