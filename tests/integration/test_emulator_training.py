"""The local SageMaker's training jobs, driven with plain boto3 (and the AWS CLI) as a reader would drive the service."""

import io
import json
import os
import socket
import tarfile
import time
import urllib.request

import pytest
from botocore.exceptions import ClientError

from helpers import packaging
from helpers.runtime import metrics

pytestmark = pytest.mark.aws

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
BUCKET = "sagebook-test"

ECHO = '''import json, os, sys
print("argv", json.dumps(sys.argv[1:]))
print("env", json.dumps({k: os.environ.get(k) for k in ("SM_HPS", "SM_CHANNEL_TRAIN", "SM_HOSTS", "SM_CURRENT_HOST",
                                                            "TRAINING_JOB_NAME", "SM_NUM_GPUS", "MY_SETTING")}))
print("train files", sorted(os.listdir(os.environ["SM_CHANNEL_TRAIN"])))
for v in (0.5, 0.25):
    print(f"loss={v}")
open(os.path.join(os.environ["SM_MODEL_DIR"], "model.txt"), "w").write("weights")
open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "extra.txt"), "w").write("extra")
'''
SILENT = "import time\ntime.sleep(600)\n"
FAILING = "print('starting')\nraise ValueError('lr must be positive')\n"


def write_script(folder, text, name="train.py"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder


def put_tree(s3, folder, prefix):
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{f.relative_to(folder).as_posix()}", Body=f.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


def put_sourcedir(s3, folder, key="code/sourcedir.tar.gz"):
    """``sourcedir.tar.gz`` in S3, as the v2 SDK uploads a source_dir."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(folder.rglob("*")):
            if "__pycache__" not in f.parts:
                tar.add(f, arcname=f.relative_to(folder).as_posix())
    s3.put_object(Bucket=BUCKET, Key=key, Body=buf.getvalue())
    return f"s3://{BUCKET}/{key}"


def job_request(name, submit, hps=None, channels=None, **extra):
    """A CreateTrainingJob request with the framework container's contract (what the v2 SDK and CLI send)."""
    return {
        "TrainingJobName": name, "RoleArn": ROLE,
        "AlgorithmSpecification": {"TrainingImage": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6",
                                   "TrainingInputMode": "File",
                                   "MetricDefinitions": [{"Name": "loss", "Regex": r"loss=([0-9.]+)"}]},
        "HyperParameters": {"sagemaker_program": json.dumps("train.py"), "sagemaker_submit_directory": json.dumps(submit),
                            **{k: json.dumps(v) for k, v in (hps or {}).items()}},
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/output"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
        **({"InputDataConfig": [{"ChannelName": c, "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                                                  "S3Uri": u}}}
                                for c, u in channels.items()]} if channels else {}),
        **extra}


def poll(describe, status_key, timeout=300, interval=0.2):
    """Call ``describe()`` until its ``status_key`` is a final status; the last description."""
    deadline = time.monotonic() + timeout
    while True:
        d = describe()
        if d[status_key] in ("Completed", "Failed", "Stopped"):
            return d
        if time.monotonic() > deadline:
            raise AssertionError(f"still {d[status_key]} after {timeout} s")
        time.sleep(interval)


def wait(sm, name, timeout=300):
    return poll(lambda: sm.describe_training_job(TrainingJobName=name), "TrainingJobStatus", timeout)


def log_lines(local_sagemaker, name):
    logs = local_sagemaker.client("logs")
    streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=name)
    return [e["message"] for s in streams["logStreams"] for e in logs.get_log_events(
        logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=s["logStreamName"])["events"]]


def read_tar(s3, key):
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.fixture
def clients(local_sagemaker):
    return local_sagemaker.client("sagemaker"), local_sagemaker.client("s3")


def test_framework_contract_job_completes_like_the_service(local_sagemaker, clients, tmp_path):
    sm, s3 = clients
    submit = put_sourcedir(s3, write_script(tmp_path / "src", ECHO))
    data = put_tree(s3, write_script(tmp_path / "data", "x", "a.txt"), "data/train")
    s3.put_object(Bucket=BUCKET, Key="data/train2/not-mine.txt", Body=b"x")  # a sibling prefix is not the channel
    req = job_request("echo-1", submit, {"lr": 0.01, "debugger": True, "name": "abc"}, {"train": data},
                      Environment={"MY_SETTING": "on"})
    assert sm.create_training_job(**req)["TrainingJobArn"].endswith(":training-job/echo-1")
    assert sm.describe_training_job(TrainingJobName="echo-1")["TrainingJobStatus"] == "InProgress"
    d = wait(sm, "echo-1")
    assert (d["TrainingJobStatus"], d["SecondaryStatus"]) == ("Completed", "Completed")
    assert [t["Status"] for t in d["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Uploading", "Completed"]
    assert d["FinalMetricDataList"][0]["MetricName"] == "loss" and d["FinalMetricDataList"][0]["Value"] == 0.25
    assert d["AlgorithmSpecification"]["MetricDefinitions"] == req["AlgorithmSpecification"]["MetricDefinitions"]
    assert d["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{BUCKET}/output/echo-1/output/model.tar.gz"
    assert d["TrainingTimeInSeconds"] >= 1 and d["TrainingEndTime"] >= d["TrainingStartTime"]
    lines = log_lines(local_sagemaker, "echo-1")  # CloudWatch Logs, where the SDK streams them from
    argv = json.loads(next(x for x in lines if x.startswith("argv "))[5:])
    assert argv == ["--debugger", "True", "--lr", "0.01", "--name", "abc"]  # sorted, str() of the JSON value
    env = json.loads(next(x for x in lines if x.startswith("env "))[4:])
    assert json.loads(env["SM_HPS"]) == {"lr": 0.01, "debugger": True, "name": "abc"}  # no sagemaker_* keys
    assert env["TRAINING_JOB_NAME"] == "echo-1" and env["SM_CURRENT_HOST"] == "algo-1"
    assert json.loads(env["SM_HOSTS"]) == ["algo-1"] and env["MY_SETTING"] == "on"
    assert "train files ['a.txt']" in lines
    assert read_tar(s3, "output/echo-1/output/model.tar.gz") == {"model.txt": b"weights"}
    assert read_tar(s3, "output/echo-1/output/output.tar.gz") == {"extra.txt": b"extra"}
    summary = sm.list_training_jobs()["TrainingJobSummaries"]
    assert [(j["TrainingJobName"], j["TrainingJobStatus"]) for j in summary] == [("echo-1", "Completed")]


def test_sdk_v3_contract_runs_the_entry_script_from_the_code_channel(local_sagemaker, clients, tmp_path):
    """ModelTrainer ships ``code`` and ``sm_drivers`` channels; sourcecode.json names the entry script."""
    sm, s3 = clients
    code = put_tree(s3, write_script(tmp_path / "code", ECHO), "v3/code")
    drivers = tmp_path / "drivers"
    drivers.mkdir()
    (drivers / "sourcecode.json").write_text(json.dumps({"source_dir": str(tmp_path / "code"), "entry_script": "train.py",
                                                         "requirements": None, "command": None}))
    (drivers / "distributed.json").write_text("{}")
    data = put_tree(s3, write_script(tmp_path / "data", "x", "a.txt"), "v3/train")
    req = job_request("v3-1", "", channels={"train": data, "code": code,
                                            "sm_drivers": put_tree(s3, drivers, "v3/sm_drivers")})
    req["HyperParameters"] = {"lr": "0.01", "debugger": "true", "name": "abc"}  # ModelTrainer's safe_serialize
    req["AlgorithmSpecification"].update(ContainerEntrypoint=["/bin/bash"], ContainerArguments=[
        "-c", "chmod +x /opt/ml/input/data/sm_drivers/sm_train.sh && /opt/ml/input/data/sm_drivers/sm_train.sh"])
    sm.create_training_job(**req)
    assert wait(sm, "v3-1")["TrainingJobStatus"] == "Completed"
    lines = log_lines(local_sagemaker, "v3-1")
    assert json.loads(next(x for x in lines if x.startswith("argv "))[5:]) == [
        "--lr", "0.01", "--debugger", "true", "--name", "abc"]  # request order, JSON for non-strings


def test_file_channels_are_read_in_place(local_sagemaker, clients, tmp_path):
    sm, s3 = clients
    data = write_script(tmp_path / "data", "x", "big.bin")
    sm.create_training_job(**job_request("file-1", f"file://{write_script(tmp_path / 'src', ECHO)}",
                                         channels={"train": f"file://{data}"}))
    assert wait(sm, "file-1")["TrainingJobStatus"] == "Completed"
    channel = tmp_path / "work" / "emulator" / "training" / "file-1" / "input" / "data" / "train"
    assert channel.is_symlink() and channel.resolve() == data.resolve()


def test_script_error_fails_the_job_with_its_last_error_line(clients, tmp_path):
    sm, s3 = clients
    sm.create_training_job(**job_request("bad-1", put_sourcedir(s3, write_script(tmp_path / "src", FAILING))))
    d = wait(sm, "bad-1")
    assert (d["TrainingJobStatus"], d["SecondaryStatus"]) == ("Failed", "Failed")
    assert 'ErrorMessage "ValueError: lr must be positive"' in d["FailureReason"]
    assert "ModelArtifacts" not in d


def test_missing_channel_data_is_a_client_error(clients, tmp_path):
    sm, s3 = clients
    sm.create_training_job(**job_request("nodata-1", put_sourcedir(s3, write_script(tmp_path / "src", ECHO)),
                                         channels={"train": f"s3://{BUCKET}/nothing/here"}))
    d = wait(sm, "nodata-1")
    assert d["TrainingJobStatus"] == "Failed" and d["FailureReason"].startswith("ClientError: Data download failed")


def test_stop_training_job_ends_a_silent_job(clients, tmp_path):
    sm, s3 = clients
    sm.create_training_job(**job_request("silent-1", put_sourcedir(s3, write_script(tmp_path / "src", SILENT))))
    deadline = time.monotonic() + 30
    while sm.describe_training_job(TrainingJobName="silent-1")["SecondaryStatus"] != "Training":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    started = time.monotonic()
    sm.stop_training_job(TrainingJobName="silent-1")
    assert sm.describe_training_job(TrainingJobName="silent-1")["TrainingJobStatus"] in ("Stopping", "Stopped")
    d = wait(sm, "silent-1", timeout=30)
    assert (d["TrainingJobStatus"], d["SecondaryStatus"]) == ("Stopped", "Stopped")
    assert time.monotonic() - started < 10  # SIGTERM ends it; it printed nothing
    assert "model.tar.gz" in d["ModelArtifacts"]["S3ModelArtifacts"]  # the service uploads what a stopped job saved
    with pytest.raises(ClientError, match="ValidationException"):
        sm.stop_training_job(TrainingJobName="silent-1")


def test_max_runtime_stops_a_silent_job(clients, tmp_path):
    sm, s3 = clients
    sm.create_training_job(**job_request("slow-1", put_sourcedir(s3, write_script(tmp_path / "src", SILENT)),
                                         StoppingCondition={"MaxRuntimeInSeconds": 2}))
    d = wait(sm, "slow-1", timeout=30)
    assert (d["TrainingJobStatus"], d["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")
    assert d["TrainingTimeInSeconds"] < 8


def test_bad_requests_get_the_services_errors_and_the_server_survives(local_sagemaker, clients, tmp_path):
    sm, s3 = clients
    req = job_request("dup-1", put_sourcedir(s3, write_script(tmp_path / "src", "print('loss=0.1')\n")))
    sm.create_training_job(**req)
    with pytest.raises(ClientError) as e:
        sm.create_training_job(**req)
    assert e.value.response["Error"]["Code"] == "ResourceInUse"
    with pytest.raises(ClientError) as e:
        sm.describe_training_job(TrainingJobName="no-such-job")
    assert e.value.response["Error"]["Code"] == "ValidationException"
    for body in (b'{"TrainingJobName": 3}', b"not json", b"[]"):  # what botocore would never send
        raw = urllib.request.Request(local_sagemaker.endpoint_url, data=body, method="POST", headers={
            "X-Amz-Target": "SageMaker.CreateTrainingJob", "Content-Type": "application/x-amz-json-1.1"})
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(raw, timeout=10)
        assert http.value.code == 400 and json.loads(http.value.read())["__type"] == "ValidationException"
    assert wait(sm, "dup-1")["TrainingJobStatus"] == "Completed"


@pytest.mark.slow
def test_staged_entry_point_trains_and_shared_checkpoint_uri_does_not_mix_jobs(local_sagemaker, clients,
                                                                              synthetic_root, tmp_path):
    """Two jobs with other hyperparameters on one CheckpointConfig.S3Uri both complete (each restores the other's)."""
    sm, s3 = clients
    submit = put_sourcedir(s3, packaging.stage_source_dir(tmp_path / "src"))
    data = {s: put_tree(s3, synthetic_root / s, f"data/{s}") for s in ("train", "valid")}
    ckpt = f"s3://{BUCKET}/checkpoints"
    for name, lr in (("tiny-1", 0.01), ("tiny-2", 0.05)):
        req = job_request(name, submit, {"image_size": 32, "batch_size": 8, "epochs": 1, "lr": lr}, data,
                          CheckpointConfig={"S3Uri": ckpt})
        req["AlgorithmSpecification"]["MetricDefinitions"] = metrics.metric_definitions()
        sm.create_training_job(**req)
        d = wait(local_sagemaker.client("sagemaker"), name)
        assert d["TrainingJobStatus"] == "Completed", d.get("FailureReason")
        assert {m["MetricName"] for m in d["FinalMetricDataList"]} >= {"train:loss", "valid:accuracy"}
        assert {"model.pth", "model_config.json"} <= set(read_tar(s3, f"output/{name}/output/model.tar.gz"))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="checkpoints/")["Contents"]]
    assert keys == ["checkpoints/tiny-1/checkpoint.pt", "checkpoints/tiny-2/checkpoint.pt"]
    restored = tmp_path / "work" / "emulator" / "training" / "tiny-2" / "checkpoints" / "tiny-1" / "checkpoint.pt"
    assert restored.is_file()  # the service restores the whole URI into every job that names it


def test_emulator_serves_on_its_port_and_stops(tmp_path):
    from helpers.emulator import LocalSageMaker

    with LocalSageMaker(tmp_path) as sm:
        port = sm.port
        assert sm.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens once it stopped


def test_aws_cli_creates_describes_lists_and_stops_training_jobs(aws_cli, clients, tmp_path):
    """The AWS CLI examples work unchanged with ``--endpoint-url``."""
    sm, s3 = clients
    submit = put_sourcedir(s3, write_script(tmp_path / "src", "print('loss=0.125')\n"))
    request = tmp_path / "job.json"
    request.write_text(json.dumps(job_request("cli-1", submit)))
    assert aws_cli("sagemaker", "create-training-job", "--cli-input-json", f"file://{request}")["TrainingJobArn"]
    deadline = time.monotonic() + 60
    while (d := aws_cli("sagemaker", "describe-training-job", "--training-job-name", "cli-1"))[
            "TrainingJobStatus"] == "InProgress":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert d["TrainingJobStatus"] == "Completed" and d["FinalMetricDataList"][0]["Value"] == 0.125
    request.write_text(json.dumps(job_request("cli-2", put_sourcedir(s3, write_script(tmp_path / "slow", SILENT),
                                                                     "code/slow.tar.gz"))))
    aws_cli("sagemaker", "create-training-job", "--cli-input-json", f"file://{request}")
    while aws_cli("sagemaker", "describe-training-job", "--training-job-name", "cli-2")["SecondaryStatus"] != "Training":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    aws_cli("sagemaker", "stop-training-job", "--training-job-name", "cli-2")
    assert wait(sm, "cli-2", timeout=30)["TrainingJobStatus"] == "Stopped"
    names = {j["TrainingJobName"]: j["TrainingJobStatus"]
             for j in aws_cli("sagemaker", "list-training-jobs")["TrainingJobSummaries"]}
    assert names == {"cli-1": "Completed", "cli-2": "Stopped"}


def test_instance_count_runs_one_process_per_instance_under_torchrun(local_sagemaker, clients, tmp_path):
    sm, s3 = clients
    # one write() for the line: the ranks share one output here, and print()'s word-by-word writes (python -u)
    # once interleaved there ("rankrank 0 of 2 ... 1 of 2 ...")
    script = ("import os, sys\nsys.stdout.write(f\"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} "
              "{os.environ['SM_HOSTS']}\\n\")\n")
    req = job_request("multi-1", put_sourcedir(s3, write_script(tmp_path / "src", script)))
    req["ResourceConfig"]["InstanceCount"] = 2
    sm.create_training_job(**req)
    assert wait(sm, "multi-1", timeout=120)["TrainingJobStatus"] == "Completed"
    lines = log_lines(local_sagemaker, "multi-1")
    ranks = sorted(x for x in lines if x.startswith("rank "))
    job_logs = {str(f): f.read_text() for f in (tmp_path / "work").rglob("job.log")}
    assert ranks == ['rank 0 of 2 ["algo-1", "algo-2"]', 'rank 1 of 2 ["algo-1", "algo-2"]'], (lines, job_logs)


def test_an_operation_moto_lacks_is_a_clear_error_and_the_server_survives(local_sagemaker, clients, capfd):
    iam = local_sagemaker.client("iam")
    with pytest.raises(ClientError) as e:
        iam.simulate_custom_policy(PolicyInputList=["{}"], ActionNames=["s3:GetObject"])
    assert e.value.response["Error"]["Code"] == "NotImplemented"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
    assert "Traceback" not in capfd.readouterr().err  # no stack trace on the server's stderr either
    assert clients[0].list_training_jobs()["TrainingJobSummaries"] == []


def test_python_m_helpers_emulator_serves_until_sigterm(tmp_path):
    import re
    import signal
    import subprocess
    import sys

    import boto3

    proc = subprocess.Popen([sys.executable, "-m", "helpers.emulator", "--port", "0", "--work-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = re.search(r"listening on (http://\S+)", proc.stdout.readline()).group(1)
        sm = boto3.client("sagemaker", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        assert sm.list_training_jobs()["TrainingJobSummaries"] == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


PROBE = '''import json, os, sys, time
import torch
print("probe", json.dumps({"cwd": os.getcwd(), "argv": sys.argv, "path0": sys.path[0], "pid": os.getpid(),
                           "pgid": os.getpgid(0), "threads": torch.get_num_threads(),
                           "omp": os.environ.get("OMP_NUM_THREADS"), "leak": os.environ.get("AWS_SECRET_ACCESS_KEY"),
                           "helpers": any(m == "helpers" or m.startswith("helpers.") for m in sys.modules),
                           "nice": os.getpriority(os.PRIO_PROCESS, 0)}))
time.sleep(float(os.environ.get("HOLD", "0")))
sys.exit(int(os.environ.get("EXIT", "0")))
'''


def probe(local_sagemaker, name):
    return json.loads(next(x for x in log_lines(local_sagemaker, name) if x.startswith("probe "))[6:])


def test_a_job_forked_from_the_warm_interpreter_is_a_fresh_script_run(local_sagemaker, clients, tmp_path,
                                                                       monkeypatch):
    """Forked from the interpreter that preloaded torch, a job still gets its own process group, folder, argv,
    environment (nothing of the emulator's), thread count, and exit status; and none of the emulator's code."""
    sm, s3 = clients
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "emulator-only")  # the emulator's credentials, not the job's
    submit = put_sourcedir(s3, write_script(tmp_path / "src", PROBE))
    sm.create_training_job(**job_request("probe-1", submit, {"lr": 0.1},
                                         Environment={"OMP_NUM_THREADS": "1", "EXIT": "3"}))
    d = wait(sm, "probe-1")
    assert d["TrainingJobStatus"] == "Failed" and "ExitCode 3" in d["FailureReason"]
    p = probe(local_sagemaker, "probe-1")
    code = local_sagemaker.work_dir / "emulator" / "training" / "probe-1" / "code"
    assert p["cwd"] == str(code) and p["path0"] == str(code) and p["argv"] == ["train.py", "--lr", "0.1"]
    assert p["pgid"] == p["pid"]  # its own process group: a stop ends it and its children
    assert p["threads"] == 1 and p["omp"] == "1" and p["leak"] is None and p["helpers"] is False
    assert p["nice"] == os.getpriority(os.PRIO_PROCESS, 0)  # not the low priority the preloading had
    assert local_sagemaker.training.warm_interpreter().available()  # it did come from the warm interpreter


def test_jobs_running_at_once_share_the_cores(local_sagemaker, clients, tmp_path):
    sm, s3 = clients
    cores = os.cpu_count() or 1
    submit = put_sourcedir(s3, write_script(tmp_path / "src", PROBE))
    sm.create_training_job(**job_request("first", submit, Environment={"HOLD": "6"}))
    log = local_sagemaker.work_dir / "emulator" / "training" / "first" / "job.log"  # written as it comes
    deadline = time.monotonic() + 60
    while not (log.is_file() and "probe " in log.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    sm.create_training_job(**job_request("second", submit))  # starts while the first runs
    for name in ("first", "second"):
        assert wait(sm, name)["TrainingJobStatus"] == "Completed"
    assert probe(local_sagemaker, "first")["threads"] == cores  # alone when it started
    assert probe(local_sagemaker, "second")["threads"] == max(1, cores // 2)
    # a tuning job's parallel trials start a moment apart: each gets its share from the start
    run = local_sagemaker.training.create(job_request("peer", submit), "us-east-1", peers=2)
    wait(sm, "peer")
    assert probe(local_sagemaker, "peer")["threads"] == max(1, cores // 2) and run["TrainingJobArn"]


def test_a_tuning_trial_takes_the_framework_containers_path(local_sagemaker, clients, tmp_path):
    """v3's tuner sends sm_drivers and sagemaker_program but cannot set ContainerEntrypoint: the container's
    training toolkit runs the script (argv from the toolkit), not the SDK's driver."""
    sm, s3 = clients
    submit = put_sourcedir(s3, write_script(tmp_path / "src", PROBE))
    drivers = put_tree(s3, write_script(tmp_path / "drivers", json.dumps({"entry_script": "missing.py"}),
                                        "sourcecode.json"), "drivers")
    req = job_request("trial-1", submit, {"lr": 0.1}, {"sm_drivers": drivers})
    req["HyperParameters"]["sagemaker_program"] = "train.py"  # v3 sends it without JSON quotes
    sm.create_training_job(**req)
    assert wait(sm, "trial-1")["TrainingJobStatus"] == "Completed"
    assert probe(local_sagemaker, "trial-1")["argv"] == ["train.py", "--lr", "0.1"]


@pytest.mark.reliability
@pytest.mark.slow
def test_a_spot_interruption_restarts_the_job_from_its_checkpoint(local_sagemaker, clients, synthetic_root,
                                                                  tmp_path):
    """Spot capacity reclaimed mid-job: Interrupted, Restarting, then the same job resumes from its checkpoint,
    and its history holds every epoch exactly once."""
    import boto3

    from helpers import session
    from helpers.config import RunConfig

    sm, s3 = clients
    submit = put_sourcedir(s3, packaging.stage_source_dir(tmp_path / "src", debugger=False))
    data = {s: put_tree(s3, synthetic_root / s, f"data/{s}") for s in ("train", "valid")}
    hps = {"image_size": 96, "batch_size": 8, "epochs": 8, "lr": 0.01, "patience": 8,
           "use_feature_cache": False, "cache_images": False, "num_workers": 0}
    req = job_request("spot-1", submit, hps, data, CheckpointConfig={"S3Uri": f"s3://{BUCKET}/checkpoints"},
                      EnableManagedSpotTraining=True)
    req["StoppingCondition"]["MaxWaitTimeInSeconds"] = 1200
    req["AlgorithmSpecification"]["MetricDefinitions"] = metrics.metric_definitions()
    sm.create_training_job(**req)
    job_log = local_sagemaker.work_dir / "emulator" / "training" / "spot-1" / "job.log"
    deadline = time.monotonic() + 120
    while "checkpoint saved epoch=2" not in (job_log.read_text() if job_log.exists() else ""):
        assert time.monotonic() < deadline, job_log.read_text()[-2000:]
        time.sleep(0.1)
    env = local_sagemaker.environ()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        boto_session = boto3.Session(region_name="us-east-1")
        session.simulate_spot_interruption(RunConfig(work_dir=str(tmp_path)), boto_session, "spot-1")
        with pytest.raises(Exception, match="Cannot interrupt tiny-missing: Requested resource not found"):
            session.simulate_spot_interruption(RunConfig(work_dir=str(tmp_path)), boto_session, "tiny-missing")
    d = wait(local_sagemaker.client("sagemaker"), "spot-1")
    assert d["TrainingJobStatus"] == "Completed", d.get("FailureReason")
    statuses = [t["Status"] for t in d["SecondaryStatusTransitions"]]
    assert statuses[statuses.index("Interrupted"):] == ["Interrupted", "Restarting", "Training", "Uploading",
                                                        "Completed"]
    assert d["BillableTimeInSeconds"] < d["TrainingTimeInSeconds"]
    lines = job_log.read_text().splitlines()
    assert sum(line.startswith("==== ") for line in lines) == 2  # started twice
    assert any("resuming from the checkpoint of epoch" in line for line in lines)
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=BUCKET, Key="output/spot-1/output/model.tar.gz")
                                         ["Body"].read())) as tar:
        metrics_json = json.load(tar.extractfile("metrics.json")) if "metrics.json" in tar.getnames() else None
    if metrics_json is None:
        with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=BUCKET, Key="output/spot-1/output/output.tar.gz")
                                             ["Body"].read())) as tar:
            metrics_json = json.load(tar.extractfile("metrics.json"))
    assert [row["epoch"] for row in metrics_json["history"]] == list(range(1, 9))  # none lost, none repeated
    record = json.loads((job_log.parent / "job.json").read_text())  # the job's record keeps both starts' epochs
    assert record["TrainingJobStatus"] == "Completed" and record["Interruptions"] == 1
    epochs = record["Metrics"]["epoch"]
    assert epochs[0] == 1 and epochs[-1] == 8 and set(epochs) == set(range(1, 9)), epochs
    with pytest.raises(Exception, match="not training"):  # and a finished job cannot be interrupted
        local_sagemaker.training.interrupt("spot-1", "us-east-1")


TENSORBOARD = '''import json, os
config = json.load(open(os.path.join(os.environ["SM_INPUT_CONFIG_DIR"], "tensorboardoutputconfig.json")))
os.makedirs(config["LocalPath"], exist_ok=True)
open(os.path.join(config["LocalPath"], "events.out.tfevents.1"), "w").write("scalars")
print("mlflow", json.dumps({k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}))
'''


def test_tensorboard_output_config_is_uploaded_and_the_notebooks_mlflow_settings_stay_out(
        local_sagemaker, clients, tmp_path, monkeypatch):
    sm, s3 = clients
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/the-notebooks-own.db")  # not the job's: the service
    submit = put_sourcedir(s3, write_script(tmp_path / "src", TENSORBOARD))  # would never see it
    req = job_request("tb-1", submit, TensorBoardOutputConfig={"S3OutputPath": f"s3://{BUCKET}/tb"},
                      Environment={"MLFLOW_EXPERIMENT_NAME": "mine"})
    sm.create_training_job(**req)
    assert wait(sm, "tb-1")["TrainingJobStatus"] == "Completed"
    local_path = json.loads((local_sagemaker.work_dir / "emulator" / "training" / "tb-1" / "input" / "config" /
                             "tensorboardoutputconfig.json").read_text())["LocalPath"]
    assert local_path.endswith("tb-1/output/tensorboard")  # /opt/ml/output/tensorboard, in the job's folder
    obj = s3.get_object(Bucket=BUCKET, Key="tb/tb-1/tensorboard-output/events.out.tfevents.1")  # the SDK's path
    assert obj["Body"].read() == b"scalars"
    lines = log_lines(local_sagemaker, "tb-1")
    assert json.loads(next(x for x in lines if x.startswith("mlflow "))[7:]) == {"MLFLOW_EXPERIMENT_NAME": "mine"}
