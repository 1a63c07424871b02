"""How the local SageMaker hands hyperparameters, metrics and failures to and from a training script."""

from helpers.emulator import training


def test_framework_container_decodes_json_drops_sagemaker_keys_and_sorts():
    raw = {"sagemaker_program": '"train.py"', "lr": "0.01", "debugger": "true", "name": '"abc"', "plain": "abc",
           "b": "2", "opts": '{"y": 1, "x": 2}'}
    hps = training.toolkit_hyperparameters(raw)
    assert hps == {"lr": 0.01, "debugger": True, "name": "abc", "plain": "abc", "b": 2, "opts": {"y": 1, "x": 2}}
    # str() of the decoded value, as sagemaker-training passes it: true -> True, dicts as k=v pairs
    assert training.toolkit_args(hps) == ["-b", "2", "--debugger", "True", "--lr", "0.01", "--name", "abc",
                                          "--opts", "x=2,y=1", "--plain", "abc"]


def test_sdk_v3_driver_keeps_order_and_json_encodes_non_strings():
    raw = {"lr": "0.01", "debugger": "true", "name": "abc", "opts": '{"x": 2}'}
    assert training.driver_args(raw) == ["--lr", "0.01", "--debugger", "true", "--name", "abc",
                                         "--opts", '{"x": 2}']


def test_metrics_come_from_the_jobs_own_definitions():
    rx = training.metric_regexes([{"Name": "valid:accuracy", "Regex": r"split=valid .*accuracy=([0-9.]+)"},
                                  {"Name": "broken", "Regex": r"loss=(\S+)"}])
    assert training.parse_metrics("#metrics split=valid epoch=1 loss=nan? accuracy=0.75", rx) == [
        ("valid:accuracy", 0.75)]  # a group that is not a number is skipped, as the service skips it
    assert training.parse_metrics("nothing here", rx) == []


def test_failure_reason_names_the_last_error_line(tmp_path):
    lines = ["epoch 1", "Traceback (most recent call last):", '  File "train.py", line 3', "ValueError: lr must be > 0",
             "exit"]
    reason = training.failure_reason(1, lines, ["python", "train.py", "--lr", "-1"], tmp_path / "failure")
    assert reason.startswith("AlgorithmError: ExecuteUserScriptError:\nExitCode 1")
    assert 'ErrorMessage "ValueError: lr must be > 0"' in reason and "--lr -1" in reason
    (tmp_path / "failure").write_text("my own reason")
    assert training.failure_reason(1, lines, ["python"], tmp_path / "failure") == "my own reason"
    assert len(training.failure_reason(1, ["E" * 5000], ["python"], tmp_path / "none")) == 1024


def test_a_channel_copies_the_prefix_as_a_folder_and_no_key_escapes_it(tmp_path):
    from moto.s3.models import s3_backends

    from helpers.emulator import storage
    from helpers.emulator.server import ACCOUNT_ID

    s3 = s3_backends[ACCOUNT_ID]["aws"]
    s3.create_bucket("sagebook-storage-test", "us-east-1")
    for key in ("data/train/a/1.png", "data/train/b/2.png", "data/train2/c/3.png", "data/train/../../evil",
                "data/train/a/../x", "data/train/dir/"):
        s3.put_object("sagebook-storage-test", key, key.encode())
    dest = tmp_path / "in" / "train"
    assert storage.download_prefix("s3://sagebook-storage-test/data/train", dest) == 2
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == ["a/1.png", "b/2.png"]
    assert (dest / "b" / "2.png").read_bytes() == b"data/train/b/2.png"
    assert not (tmp_path / "evil").exists() and not (dest / "x").exists()
    one = tmp_path / "one"  # a prefix that names one object exactly
    assert storage.download_prefix("s3://sagebook-storage-test/data/train/a/1.png", one) == 1
    assert (one / "1.png").read_bytes() == b"data/train/a/1.png"


def test_a_new_local_sagemaker_releases_the_instances_of_ended_jobs_but_not_of_abandoned_ones(tmp_path):
    import json
    import time

    def job(name, status):
        folder = tmp_path / name
        for sub in ("input/data/train", "checkpoints/" + name, "model", "output/data"):
            (folder / sub).mkdir(parents=True)
            (folder / sub / "f.bin").write_bytes(b"x" * 10)
        (folder / "input" / "data" / "link").symlink_to(tmp_path, target_is_directory=True)
        (folder / "job.log").write_text("log\n")
        (folder / training.JOB_RECORD).write_text(json.dumps({"TrainingJobName": name, "TrainingJobStatus": status}))
        return folder

    done, failed, running = job("done-1", "Completed"), job("failed-1", "Failed"), job("running-1", "InProgress")
    (tmp_path / training.RELEASED / "1-2" / "old-1").mkdir(parents=True)  # left half deleted by a killed one
    training.TrainingJobs(tmp_path)  # what a local SageMaker does when it starts on this work folder
    for folder in (done, failed):  # at once: moved aside, deleted in the background
        assert sorted(p.name for p in folder.iterdir()) == ["job.json", "job.log"]
    assert (running / "checkpoints" / "running-1" / "f.bin").exists()  # a killed run's work stays
    assert json.loads((running / training.JOB_RECORD).read_text())["TrainingJobStatus"] == "Failed"
    deadline = time.monotonic() + 10
    while (tmp_path / training.RELEASED).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (tmp_path / training.RELEASED).exists()  # the copies are gone, the old leftovers too
    assert tmp_path.exists() and (done / "job.log").read_text() == "log\n"  # a symlinked channel's target stays


def test_a_job_restarted_within_the_second_writes_on_to_its_log_stream():
    from moto.logs.models import logs_backends

    from helpers.emulator import storage
    from helpers.emulator.server import ACCOUNT_ID

    group, name = "/aws/sagemaker/TrainingJobs", "unit-restart/algo-1-1796570000"
    first = storage.LogStream("us-east-1", group, name)
    first.write("before the interruption")
    first.flush()
    again = storage.LogStream("us-east-1", group, name)  # the restart, the same second: raised before
    again.write("after the restart")
    again.flush()
    events = logs_backends[ACCOUNT_ID]["us-east-1"].groups[group].streams[name].events
    assert [e.message for e in events] == ["before the interruption", "after the restart"]
