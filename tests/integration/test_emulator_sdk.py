"""The SageMaker Python SDK against the local SageMaker, with only AWS_ENDPOINT_URL pointing it there:
v3 (what the chapters use) in this process, v2 (what the published solutions use) in a subprocess."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import pytest

from helpers import hpo, sagemaker_jobs
from helpers.config import RunConfig
from helpers.runtime import metrics

pytestmark = [pytest.mark.aws, pytest.mark.slow]

SCRIPT = '''import json, os, sys
print("argv", json.dumps(sys.argv[1:]))
print("loss=0.3")
open(os.path.join(os.environ["SM_MODEL_DIR"], "model.txt"), "w").write("weights")
'''
SDKV2 = Path(__file__).resolve().parents[2] / ".venv" / "sdkv2"  # make venv installs SDK v2 there


@pytest.fixture
def sdk_env(local_sagemaker, monkeypatch):
    for k, v in local_sagemaker.environ().items():
        monkeypatch.setenv(k, v)
    s3 = local_sagemaker.client("s3")
    s3.put_object(Bucket="sagebook-test", Key="data/train/a.txt", Body=b"x")
    return local_sagemaker


def test_sdk_v2_pytorch_estimator_trains_on_the_emulator(sdk_env, tmp_path):
    """v2's PyTorch estimator: source_dir upload, fit, logs, model_data, hyperparameters as the container passes them."""
    if not (SDKV2 / "sagemaker").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"SDK v2 is missing from {SDKV2}: `make venv` installs it")
        pytest.skip(f"SDK v2 is not installed in {SDKV2} (`make venv` installs it)")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(SCRIPT)
    program = textwrap.dedent(f'''
        import boto3, sagemaker
        assert sagemaker.__version__.startswith("2."), sagemaker.__version__
        from sagemaker.pytorch import PyTorch
        sess = sagemaker.Session(boto_session=boto3.Session(region_name="us-east-1"), default_bucket="sagebook-test")
        est = PyTorch(entry_point="train.py", source_dir={str(tmp_path / "src")!r},
                      role="arn:aws:iam::123456789012:role/R", framework_version="2.6", py_version="py312",
                      instance_type="ml.m5.large", instance_count=1,
                      hyperparameters={{"lr": 0.01, "flag": True, "name": "abc"}}, sagemaker_session=sess,
                      metric_definitions=[{{"Name": "loss", "Regex": r"loss=([0-9.]+)"}}],
                      output_path="s3://sagebook-test/out", disable_profiler=True, debugger_hook_config=False)
        est.fit({{"train": "s3://sagebook-test/data/train"}}, wait=True, logs="None")
        print("RESULT", est.latest_training_job.name, est.model_data)
    ''')
    env = {**os.environ, "PYTHONPATH": str(SDKV2), "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    name, model_data = next(line for line in r.stdout.splitlines() if line.startswith("RESULT")).split()[1:]
    d = sdk_env.client("sagemaker").describe_training_job(TrainingJobName=name)
    assert d["TrainingJobStatus"] == "Completed" and d["FinalMetricDataList"][0]["Value"] == 0.3
    assert model_data == f"s3://sagebook-test/out/{name}/output/model.tar.gz"
    assert json.loads(d["HyperParameters"]["sagemaker_program"]) == "train.py"
    log = (sdk_env.work_dir / "emulator" / "training" / name / "job.log").read_text()
    assert 'argv ["--flag", "True", "--lr", "0.01", "--name", "abc"]' in log  # as the framework container passes them


def test_sdk_v3_trains_and_tunes_the_entry_point(sdk_env, synthetic_root, tmp_path):
    """The chapters' calls: ModelTrainer.train on the staged entry point, then a 3-trial HyperparameterTuner."""
    from sagemaker.train.tuner import HyperparameterTuner

    from helpers import data, session

    cfg = RunConfig(dataset=str(synthetic_root), s3_prefix="s3://sagebook-test/run", work_dir=str(tmp_path / "w"))
    boto_session = boto3.Session(region_name="us-east-1")
    report = data.validate_dataset(synthetic_root)
    record = data.manifest_record(cfg, report, data.upload_dataset(cfg, report, client=boto_session.client("s3"),
                                                                   progress=False))
    data.require_uploaded(boto_session, record)
    sm_session = sagemaker_jobs.sdk_session(cfg, boto_session)
    role = session.execution_role(cfg, boto_session)
    static = hpo.static_hyperparameters(cfg, image_size=32)

    trainer = sagemaker_jobs.model_trainer(cfg, sm_session, role=role,
                                           hyperparameters={**static, "lr": 0.01, "epochs": 2},
                                           base_job_name="sb-test", instance_type="ml.m5.large")
    trainer.train(input_data_config=sagemaker_jobs.inputs(record), wait=False, logs=False)
    job = trainer._latest_training_job
    job.wait(poll=1)
    assert job.training_job_status == "Completed", job.failure_reason
    out = sagemaker_jobs.download_and_extract(sm_session, sagemaker_jobs.job_output_path(job), tmp_path / "out")
    assert json.loads((out / "metrics.json").read_text())["history"]
    model_dir = sagemaker_jobs.download_and_extract(sm_session, job.model_artifacts.s3_model_artifacts,
                                                    tmp_path / "model")
    assert (model_dir / "model.pth").is_file() and (model_dir / "code" / "inference.py").is_file()
    assert any("#metrics" in line for line in sagemaker_jobs.log_tail(boto_session, job.training_job_name))

    tuner = HyperparameterTuner(
        trainer, objective_metric_name=metrics.OBJECTIVE_METRIC, objective_type=metrics.OBJECTIVE_TYPE,
        metric_definitions=metrics.metric_definitions(), hyperparameter_ranges=hpo.sagemaker_ranges(),
        strategy="Random", random_seed=1, max_jobs=3, max_parallel_jobs=2, base_tuning_job_name="sb-test")
    trainer.hyperparameters = dict(static)  # the tuned ones come from the ranges
    tuner.tune(inputs=sagemaker_jobs.inputs(record, ("train", "valid")), wait=False)
    tuner.latest_tuning_job.wait(poll=1)
    result = sagemaker_jobs.tuning_result(tuner, static, 1.0)
    assert len(result.trials) == 3 and set(result.trials.state) == {"COMPLETE"}
    assert set(result.best_hyperparameters) == set(hpo.SEARCH_SPACE)
    assert result.best_value == result.trials.value.max()
    assert result.trials.epochs_run.tolist() == result.trials.epochs.tolist()  # the ``epoch`` metric


def test_a_local_weights_file_travels_as_the_weights_channel(sdk_env, synthetic_root, tmp_path):
    """A path on this machine does not exist in the container: the file goes to S3 and into the job as the
    ``weights`` channel, and the entry point loads it from there."""
    import torch
    import torchvision

    from helpers import data, session

    weights = tmp_path / "resnet18-mine.pth"
    torch.save(torchvision.models.get_model("resnet18").state_dict(), weights)
    cfg = RunConfig(dataset=str(synthetic_root), s3_prefix="s3://sagebook-test/run", work_dir=str(tmp_path / "w"),
                    backbone="resnet18", weights=str(weights))
    boto_session = boto3.Session(region_name="us-east-1")
    report = data.validate_dataset(synthetic_root)
    record = data.manifest_record(cfg, report, data.upload_dataset(cfg, report, client=boto_session.client("s3"),
                                                                   progress=False))
    sm_session = sagemaker_jobs.sdk_session(cfg, boto_session)
    trainer = sagemaker_jobs.model_trainer(
        cfg, sm_session, role=session.execution_role(cfg, boto_session), base_job_name="sb-weights",
        hyperparameters={**hpo.static_hyperparameters(cfg, image_size=32), "lr": 0.01, "epochs": 1},
        instance_type="ml.m5.large")
    trainer.train(input_data_config=sagemaker_jobs.inputs(record, ("train", "valid")), wait=False, logs=False)
    job = trainer._latest_training_job
    job.wait(poll=1)
    assert job.training_job_status == "Completed", job.failure_reason
    d = boto_session.client("sagemaker").describe_training_job(TrainingJobName=job.training_job_name)
    assert d["HyperParameters"]["weights"].strip('"') == "resnet18-mine.pth"
    chans = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in d["InputDataConfig"]}
    assert chans["weights"] == "s3://sagebook-test/run/weights/resnet18-mine.pth"
    log = (sdk_env.work_dir / "emulator" / "training" / job.training_job_name / "job.log").read_text()
    assert "input/data/weights/resnet18-mine.pth weights" in log
