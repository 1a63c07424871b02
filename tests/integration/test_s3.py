import boto3
import pytest
from moto import mock_aws

from helpers import data, s3
from helpers.config import RunConfig

pytestmark = pytest.mark.aws


@pytest.fixture
def client(aws_credentials):
    with mock_aws():
        c = boto3.client("s3", region_name="us-east-1")
        c.create_bucket(Bucket="sagebook-test")
        yield c


def keys(client, prefix=""):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="sagebook-test", Prefix=prefix)
    return sorted(o["Key"] for p in pages for o in p.get("Contents", []))


@pytest.mark.parametrize("uri, parsed", [("s3://b/p/q/", ("b", "p/q")), ("s3://b", ("b", "")), ("s3://b/", ("b", ""))])
def test_parse_s3_uri(uri, parsed):
    assert s3.parse_s3_uri(uri) == parsed


@pytest.mark.parametrize("uri", ["b/p", "s3:///p", "https://b.s3.amazonaws.com/p"])
def test_bad_s3_uri(uri):
    with pytest.raises(s3.S3Error, match="s3://bucket/prefix"):
        s3.parse_s3_uri(uri)


def test_sync_uploads_then_skips_unchanged(client, synthetic_root, tmp_path):
    uri = "s3://sagebook-test/data/ds"
    first = s3.sync_to_s3(synthetic_root, uri, client=client, progress=False)
    files = sorted(p.relative_to(synthetic_root).as_posix() for p in synthetic_root.rglob("*") if p.is_file())
    assert first.transferred == len(files) and first.skipped == 0
    assert keys(client, "data/ds/") == [f"data/ds/{f}" for f in files]
    second = s3.sync_to_s3(synthetic_root, uri, client=client, progress=False)
    assert (second.transferred, second.skipped, second.bytes) == (0, len(files), 0)
    assert "already up to date" in str(second)


def test_changed_file_is_uploaded_again(client, tmp_path):
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "b.txt").write_text("two")
    s3.sync_to_s3(tmp_path, "s3://sagebook-test/x", client=client, progress=False)
    (tmp_path / "a.txt").write_text("uno")  # same size, other content
    r = s3.sync_to_s3(tmp_path, "s3://sagebook-test/x", client=client, progress=False)
    assert (r.transferred, r.skipped) == (1, 1)
    assert client.get_object(Bucket="sagebook-test", Key="x/a.txt")["Body"].read() == b"uno"


def test_multipart_etag_matches(client, tmp_path, monkeypatch):
    monkeypatch.setattr(s3, "PART_SIZE", 5 * 1024 * 1024)  # S3's smallest part
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * (11 * 4096))  # 11 MiB: three parts
    s3.sync_to_s3(tmp_path, "s3://sagebook-test/big", client=client, progress=False)
    etag = client.head_object(Bucket="sagebook-test", Key="big/big.bin")["ETag"].strip('"')
    assert etag.endswith("-3") and etag == s3.s3_etag(tmp_path / "big.bin", 5 * 1024 * 1024)
    assert s3.sync_to_s3(tmp_path, "s3://sagebook-test/big", client=client, progress=False).skipped == 1


def test_download_round_trip_and_skip(client, synthetic_root, tmp_path):
    s3.sync_to_s3(synthetic_root, "s3://sagebook-test/ds", client=client, progress=False)
    got = s3.sync_from_s3("s3://sagebook-test/ds", tmp_path / "copy", client=client, progress=False)
    for f in synthetic_root.rglob("*"):
        if f.is_file():
            assert (tmp_path / "copy" / f.relative_to(synthetic_root)).read_bytes() == f.read_bytes()
    again = s3.sync_from_s3("s3://sagebook-test/ds", tmp_path / "copy", client=client, progress=False)
    assert again.transferred == 0 and again.skipped == got.transferred


def test_s3_dataset_source(client, synthetic_root, work_dir, monkeypatch):
    s3.sync_to_s3(synthetic_root, "s3://sagebook-test/datasets/mine", client=client, progress=False)
    monkeypatch.setattr(s3, "_client", lambda c: c or client)
    root = data.prepare_dataset(RunConfig(dataset="s3://sagebook-test/datasets/mine", work_dir=str(work_dir)),
                                progress=False)
    assert data.validate_dataset(root, progress=False).usable


@pytest.mark.parametrize("backend", ["sagemaker", "local"])
def test_upload_dataset_on_both_backends(client, synthetic_root, work_dir, backend):
    cfg = RunConfig(backend=backend, s3_prefix="s3://sagebook-test/run1/", work_dir=str(work_dir))
    report = data.validate_dataset(synthetic_root, progress=False)
    uri = data.upload_dataset(cfg, report, client=client, progress=False)
    assert uri == f"s3://sagebook-test/run1/data/{synthetic_root.name}"
    assert len(keys(client, "run1/data/")) == 30 + 1  # images and the completion marker


def test_later_chapters_notice_an_empty_bucket(client, synthetic_root, work_dir):
    import boto3

    from helpers.manifest import PrerequisiteMissing

    cfg = RunConfig(s3_prefix="s3://sagebook-test/run2", work_dir=str(work_dir))
    report = data.validate_dataset(synthetic_root, progress=False)
    record = data.manifest_record(cfg, report, f"{cfg.s3_prefix}/data/{synthetic_root.name}")
    sess = boto3.Session(region_name="us-east-1")
    with pytest.raises(PrerequisiteMissing, match="run chapter 01_data again"):
        data.require_uploaded(sess, record)  # a new local SageMaker starts with an empty S3
    data.upload_dataset(cfg, report, client=client, progress=False)
    data.require_uploaded(sess, record)


def test_missing_bucket_and_empty_prefix(client, tmp_path):
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(s3.S3Error, match="Check the bucket name"):
        s3.sync_to_s3(tmp_path, "s3://no-such-bucket/x", client=client, progress=False)
    with pytest.raises(s3.S3Error, match="Nothing found"):
        s3.sync_from_s3("s3://sagebook-test/empty", tmp_path / "out", client=client, progress=False)
