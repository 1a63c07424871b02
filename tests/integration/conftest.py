"""A moto account with a bucket and a SageMaker session that records the requests the SDK sends."""

import boto3
import pytest
from moto import mock_aws

from helpers import sagemaker_jobs
from helpers.config import RunConfig

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


@pytest.fixture
def sagemaker_env(aws_credentials, tmp_path):
    """``(cfg, session, sent)``: ``sent`` lists ``(operation, params)`` exactly as botocore sends them to moto."""
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="sagebook-test")
        cfg = RunConfig(backend="sagemaker", s3_prefix="s3://sagebook-test/run", region="us-east-1",
                        work_dir=str(tmp_path))
        sess = sagemaker_jobs.session(cfg)
        sent = []
        sess.sagemaker_client.meta.events.register(
            "before-parameter-build.sagemaker", lambda params, model, **kw: sent.append((model.name, dict(params))))
        yield cfg, sess, sent


@pytest.fixture
def local_sagemaker(tmp_path):
    """The local SageMaker on a free loopback port, with a bucket; stopped (and its jobs ended) after the test."""
    from helpers.emulator import LocalSageMaker

    with LocalSageMaker(tmp_path / "work", stop_grace_s=2) as sm:
        sm.client("s3").create_bucket(Bucket="sagebook-test")
        yield sm
