"""The ledger records what a run's session creates; the cleanup removes it in order, checks, and is idempotent."""

import json
import threading

import boto3
import pytest
from moto import mock_aws

from helpers import cleanup, ledger
from helpers.config import RunConfig
from helpers.manifest import Manifest

pytestmark = pytest.mark.aws

TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]})


@pytest.fixture
def run(aws_credentials, tmp_path):
    """A sagemaker-backend run on moto: its config and its watched session."""
    with mock_aws():
        cfg = RunConfig(backend="sagemaker", region="us-east-1", work_dir=str(tmp_path / "work"),
                        s3_prefix="s3://run-bucket/sagebook")
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="run-bucket")
        sess = boto3.Session(region_name="us-east-1")
        ledger.watch(sess, cfg.work_path, cfg.backend)
        yield cfg, sess


def create_some(sess):
    s3, iam, sm = sess.client("s3"), sess.client("iam"), sess.client("sagemaker")
    for key in ("sagebook/data/digits/train/0/a.png", "sagebook/data/digits/train/0/b.png",
                "sagebook/data/digits/valid/1/c.png"):
        s3.put_object(Bucket="run-bucket", Key=key, Body=b"x")
    role = iam.create_role(RoleName="sagebook-fn-role", AssumeRolePolicyDocument=TRUST)["Role"]["Arn"]
    iam.put_role_policy(RoleName="sagebook-fn-role", PolicyName="invoke", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}))
    sm.create_model(ModelName="sb-model", ExecutionRoleArn=role,
                    PrimaryContainer={"Image": "123.dkr.ecr.us-east-1.amazonaws.com/x:1"})
    return role


def test_every_create_of_the_session_is_recorded_once_and_failures_not(run):
    cfg, sess = run
    create_some(sess)
    with pytest.raises(Exception):  # refused by the service: nothing was created, nothing is recorded
        sess.client("iam").create_role(RoleName="sagebook-fn-role", AssumeRolePolicyDocument=TRUST)
    got = [(r.kind, r.name) for r in ledger.Ledger(cfg.work_path).entries()]
    assert got == [("s3 folder", "s3://run-bucket/sagebook/data/digits/train/0/"),
                   ("s3 folder", "s3://run-bucket/sagebook/data/digits/valid/1/"),
                   ("role", "sagebook-fn-role"), ("role policy", "invoke"), ("model", "sb-model")]
    policy = ledger.Ledger(cfg.work_path).entries()[3]
    assert policy.detail("role") == "sagebook-fn-role" and policy.backend == "sagemaker"


def test_recording_a_stage_keeps_the_ledger_and_threads_record_each_folder_once(run):
    cfg, sess = run
    s3 = sess.client("s3")
    threads = [threading.Thread(target=lambda i=i: s3.put_object(
        Bucket="run-bucket", Key=f"sagebook/output/job-{i % 3}/f{i}", Body=b"x")) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    Manifest.load(cfg.work_dir).record("data", {"dataset": "digits"})  # drops later stages, never the ledger
    Manifest.load(cfg.work_dir).record("data", {"dataset": "other"})
    names = sorted(r.name for r in ledger.Ledger(cfg.work_path).entries())
    assert names == [f"s3://run-bucket/sagebook/output/job-{i}/" for i in range(3)]


def test_cleanup_removes_in_order_checks_and_is_idempotent(run):
    cfg, sess = run
    create_some(sess)
    sess.client("s3").put_object(Bucket="run-bucket", Key="sagebook/user-notes.txt", Body=b"mine")  # recorded too
    report = cleanup.clean(cfg)
    assert report.errors == [] and report.left == []
    assert report.removed[:3] == ["role policy sagebook-fn-role/invoke", "role sagebook-fn-role", "model sb-model"]
    assert sess.client("sagemaker").list_models()["Models"] == []
    assert sess.client("iam").list_roles()["Roles"] == []
    assert sess.client("s3").list_objects_v2(Bucket="run-bucket").get("KeyCount") == 0
    again = cleanup.clean(cfg)
    assert again.removed == [] and again.left == [] and ledger.Ledger(cfg.work_path).entries() == []
    assert len(ledger.Ledger(cfg.work_path).entries(removed=True)) == 6  # the history stays


def test_cleanup_leaves_what_the_run_did_not_write(run):
    """Only the folders the run wrote into: a dataset the reader keeps beside them is not touched."""
    cfg, sess = run
    boto3.client("s3").put_object(Bucket="run-bucket", Key="sagebook/data/mine/keep.png", Body=b"x")  # not watched
    sess.client("s3").put_object(Bucket="run-bucket", Key="sagebook/data/digits/a.png", Body=b"x")
    assert cleanup.clean(cfg).left == []
    keys = [o["Key"] for o in sess.client("s3").list_objects_v2(Bucket="run-bucket")["Contents"]]
    assert keys == ["sagebook/data/mine/keep.png"]


def test_keep_endpoint_keeps_what_serves_and_calls_it(run):
    cfg, sess = run
    create_some(sess)
    report = cleanup.clean(cfg, keep_endpoint=True)
    assert report.left == [] and [r.kind for r in ledger.Ledger(cfg.work_path).entries()] == [
        "role", "role policy", "model"]
    assert sess.client("sagemaker").list_models()["Models"]


def test_the_command_reports_and_fails_on_what_is_left(run, capsys, monkeypatch):
    cfg, sess = run
    create_some(sess)
    monkeypatch.setattr(cleanup._Cleaner, "_delete_model", lambda self, r: [])  # a delete that does nothing
    monkeypatch.setenv("SAGEBOOK_WORK_DIR", str(cfg.work_path))
    entries = ledger.Ledger(cfg.work_path).entries()
    assert {r.backend for r in entries} == {"sagemaker"}
    assert cleanup.main(["--work-dir", str(cfg.work_path)]) == 1
    out = capsys.readouterr().out
    assert "left: model sb-model (sb-model)" in out


def test_removals_are_one_write_and_the_history_is_bounded(tmp_path, monkeypatch):
    """A cleanup of 180 resources rewrote the manifest 180 times; removed entries piled up run after run
    (2,700 entries, 870 kB here), and every create and removal rewrites the whole file."""
    from helpers import manifest

    monkeypatch.setattr(ledger, "HISTORY", 5)
    book = ledger.Ledger(tmp_path)
    made = [ledger.Resource("s3 folder", f"s3://b/run/f{i}/", "us-east-1", "local") for i in range(8)]
    for r in made:
        book.add(r)
    writes = []
    real = manifest.atomic_write_json
    monkeypatch.setattr(manifest, "atomic_write_json", lambda *a: writes.append(1) or real(*a))
    book.mark_removed(*made[:6])
    assert len(writes) == 1
    assert [r.name for r in book.entries()] == [r.name for r in made[6:]]
    kept = book.entries(removed=True)
    assert len(kept) == 7 and kept[0].name == made[1].name  # 5 removed (the newest) and the 2 still there
