"""A local SageMaker killed with -9 leaves nothing running: its jobs, warm interpreter and servers end too; the
next one on the same work folder marks the jobs it left as Failed in their records."""

import json
import re
import signal
import subprocess
import sys
import time

import boto3
import psutil

from helpers.emulator.training import ABANDONED, TrainingJobs
from tests.integration.test_emulator_training import BUCKET, SILENT, job_request, put_sourcedir, write_script


def test_a_killed_local_sagemaker_leaves_no_process_behind(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "helpers.emulator", "--port", "0", "--work-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        url = re.search(r"listening on (http://\S+)", proc.stdout.readline()).group(1)
        client = lambda service: boto3.client(service, endpoint_url=url, region_name="us-east-1",  # noqa: E731
                                              aws_access_key_id="testing", aws_secret_access_key="testing")
        s3, sm = client("s3"), client("sagemaker")
        s3.create_bucket(Bucket=BUCKET)
        sm.create_training_job(**job_request("long-1", put_sourcedir(s3, write_script(tmp_path / "src", SILENT))))
        deadline = time.monotonic() + 120
        while sm.describe_training_job(TrainingJobName="long-1")["SecondaryStatus"] != "Training":
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.2)
        time.sleep(1)  # the job's process is forked
        tree = psutil.Process(proc.pid).children(recursive=True)
        jobs = [p for p in tree if p.ppid() != proc.pid]  # forked by the warm interpreter
        assert len(tree) >= 3 and jobs, [p.cmdline()[:3] for p in tree]  # the reaper, the warm interpreter, the job
        record = tmp_path / "emulator" / "training" / "long-1" / "job.json"
        assert json.loads(record.read_text())["SecondaryStatus"] == "Training"  # kept as the job runs
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        _, alive = psutil.wait_procs(tree, timeout=20)
        assert not alive, [p.cmdline()[:4] for p in alive]
        assert json.loads(record.read_text())["TrainingJobStatus"] == "InProgress"  # nothing could say otherwise
        TrainingJobs(tmp_path / "emulator" / "training")  # what the next local SageMaker on this folder does first
        after = json.loads(record.read_text())
        assert after["TrainingJobStatus"] == "Failed" and after["FailureReason"] == ABANDONED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in tree:  # only what that emulator started, by PID
            try:
                p.kill()
            except psutil.Error:
                pass
