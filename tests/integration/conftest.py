"""Fixtures for AWS-facing tests: moto accounts, the local SageMaker, and the AWS CLI against it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def local_sagemaker(tmp_path):
    """The local SageMaker on a free loopback port, with a bucket; stopped (and its jobs ended) after the test."""
    from helpers.emulator import LocalSageMaker

    with LocalSageMaker(tmp_path / "work", stop_grace_s=2) as sm:
        sm.client("s3").create_bucket(Bucket="sagebook-test")
        yield sm


AWSCLI = Path(__file__).resolve().parents[2] / ".venv" / "awscli"  # make venv installs the AWS CLI there


@pytest.fixture
def aws_cli(local_sagemaker, tmp_path):
    """``aws(*args)``: the AWS CLI (v1) against the local SageMaker, with ``--endpoint-url``; returns parsed JSON."""
    if not (AWSCLI / "awscli").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"the AWS CLI is missing from {AWSCLI}: `make venv` installs it")
        pytest.skip(f"the AWS CLI is not installed in {AWSCLI} (`make venv` installs it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON"))}
    env.update(local_sagemaker.environ(), PYTHONPATH=str(AWSCLI), AWS_CONFIG_FILE=str(tmp_path / "no-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"))
    env.pop("AWS_ENDPOINT_URL")  # the flag says it, as a reader would type it

    def aws(*args: str) -> dict:
        r = subprocess.run([sys.executable, "-m", "awscli", "--endpoint-url", local_sagemaker.endpoint_url,
                            "--output", "json", *args], env=env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"aws {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return json.loads(r.stdout) if r.stdout.strip() else {}

    return aws
