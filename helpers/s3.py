"""Sync a local folder to an ``s3://bucket/prefix`` and back, skipping files already there unchanged.

"Unchanged" means same size and same ETag. Uploads use a fixed multipart threshold and part size, so
the ETag of every object this module wrote can be computed locally (MD5, or MD5-of-part-MD5s).
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.runtime.progress import bar

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024


class S3Error(RuntimeError):
    """An S3 location is malformed or cannot be reached; the message says what to check."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ``("bucket", "some/prefix")``."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise S3Error(f"{uri!r} is not an S3 URI; expected s3://bucket/prefix")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def s3_etag(path: str | os.PathLike[str], part_size: int | None = None) -> str:
    """The ETag S3 gives ``path`` when uploaded by :func:`sync_to_s3` (single part or multipart)."""
    part_size = part_size or PART_SIZE
    digests = []
    with open(path, "rb") as f:
        while chunk := f.read(part_size):
            digests.append(hashlib.md5(chunk, usedforsecurity=False).digest())
    if len(digests) <= 1 and os.path.getsize(path) < part_size:
        return (digests[0] if digests else hashlib.md5(b"", usedforsecurity=False).digest()).hex()
    return hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest() + f"-{len(digests)}"


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE)


def _client(client: Any | None) -> Any:
    if client is not None:
        return client
    import boto3

    return boto3.client("s3")


@dataclass(frozen=True)
class SyncResult:
    transferred: int
    skipped: int
    bytes: int

    def __str__(self) -> str:
        return f"{self.transferred} file(s) transferred ({self.bytes / 1e6:.1f} MB), {self.skipped} already up to date"


def list_objects(uri: str, *, client: Any | None = None) -> dict[str, dict[str, Any]]:
    """Objects under ``uri`` keyed by their path relative to the prefix: ``{"Size", "ETag"}``."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_uri(uri)
    s3 = _client(client)
    base = f"{prefix}/" if prefix else ""
    out: dict[str, dict[str, Any]] = {}
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            for obj in page.get("Contents", []):
                out[obj["Key"][len(base):]] = {"Size": obj["Size"], "ETag": obj["ETag"].strip('"')}
    except (ClientError, BotoCoreError) as e:
        raise S3Error(f"Cannot list {uri}: {e}. Check the bucket name, region and your AWS credentials.") from None
    return out


def _run(jobs: list[tuple[Any, Any, int]], fn, desc: str, progress: bool, workers: int) -> int:
    """Run ``fn(a, b)`` for each ``(a, b, size)`` job in threads; a byte-based progress bar; total bytes."""

    def one(job: tuple[Any, Any, int]) -> int:
        fn(job[0], job[1])
        return job[2]

    done = 0
    total = sum(size for _, _, size in jobs)
    with ThreadPoolExecutor(workers) as pool, bar(
        total=total, unit="B", unit_scale=True, desc=desc, progress=progress
    ) as pbar:
        for size in pool.map(one, jobs):
            pbar.update(size)
            done += size
    return done


def _upload(s3: Any, path: Path, bucket: str, key: str, config: Any) -> None:
    """One file: a single ``PutObject`` when it is small (most images), the transfer manager otherwise."""
    if path.stat().st_size < PART_SIZE:
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    else:
        s3.upload_file(str(path), bucket, key, Config=config)


def sync_to_s3(
    local_dir: str | os.PathLike[str],
    uri: str,
    *,
    client: Any | None = None,
    progress: bool = True,
    workers: int = 8,
) -> SyncResult:
    """Upload every file under ``local_dir`` to ``uri``, skipping objects already there unchanged."""
    from botocore.exceptions import BotoCoreError, ClientError

    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise S3Error(f"{local_dir} is not a folder")
    bucket, prefix = parse_s3_uri(uri)
    s3 = _client(client)
    remote = list_objects(uri, client=s3)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    jobs, skipped = [], 0
    for path in files:
        rel = path.relative_to(local_dir).as_posix()
        obj = remote.get(rel)
        if obj and obj["Size"] == path.stat().st_size and obj["ETag"] == s3_etag(path):
            skipped += 1
            continue
        jobs.append((path, f"{prefix}/{rel}" if prefix else rel, path.stat().st_size))
    config = _transfer_config()
    try:
        sent = _run(jobs, lambda p, k: _upload(s3, p, bucket, k, config), f"upload to {uri}", progress, workers)
    except (ClientError, BotoCoreError) as e:
        raise S3Error(f"Upload to {uri} failed: {e}. Rerun to continue; finished files are skipped.") from None
    return SyncResult(transferred=len(jobs), skipped=skipped, bytes=sent)


def sync_from_s3(
    uri: str,
    local_dir: str | os.PathLike[str],
    *,
    client: Any | None = None,
    progress: bool = True,
    workers: int = 8,
) -> SyncResult:
    """Download every object under ``uri`` into ``local_dir``, skipping files already there unchanged."""
    from botocore.exceptions import BotoCoreError, ClientError

    local_dir = Path(local_dir)
    bucket, prefix = parse_s3_uri(uri)
    s3 = _client(client)
    remote = list_objects(uri, client=s3)
    if not remote:
        raise S3Error(f"Nothing found under {uri}.")
    jobs, skipped = [], 0
    for rel, obj in sorted(remote.items()):
        if not rel or rel.endswith("/"):
            continue
        dest = local_dir / rel
        if ".." in Path(rel).parts:
            raise S3Error(f"Refusing the object key {rel!r} under {uri}: it leaves the target folder")
        if dest.is_file() and dest.stat().st_size == obj["Size"] and s3_etag(dest) == obj["ETag"]:
            skipped += 1
            continue
        jobs.append((f"{prefix}/{rel}" if prefix else rel, dest, obj["Size"]))
    config = _transfer_config()

    def fetch(key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        s3.download_file(bucket, key, str(tmp), Config=config)
        os.replace(tmp, dest)

    try:
        got = _run(jobs, fetch, f"download {uri}", progress, workers)
    except (ClientError, BotoCoreError) as e:
        raise S3Error(f"Download from {uri} failed: {e}. Rerun to continue; finished files are skipped.") from None
    return SyncResult(transferred=len(jobs), skipped=skipped, bytes=got)
