"""The emulator's own access to moto's S3 and CloudWatch Logs, in process (no HTTP round trip per object)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from helpers.emulator.server import ACCOUNT_ID, AwsError
from helpers.s3 import parse_s3_uri


def _s3() -> Any:
    from moto.s3.models import s3_backends

    return s3_backends[ACCOUNT_ID]["aws"]


def _bucket(name: str) -> Any:
    try:
        return _s3().get_bucket(name)
    except Exception:  # noqa: BLE001 - moto raises its own MissingBucket
        raise AwsError("ValidationException", f"The S3 bucket {name} does not exist.") from None


def list_keys(uri: str) -> list[str]:
    """The keys under an ``s3://bucket/prefix`` URI, sorted."""
    bucket, prefix = parse_s3_uri(uri)
    return sorted(k for k in _bucket(bucket).keys.keys() if k.startswith(prefix))


def download_prefix(uri: str, dest: Path) -> int:
    """Copy every object under ``uri`` into ``dest``, keeping the key paths below the prefix; returns the count.

    A prefix names a "folder" (``s3://b/data/train`` takes ``data/train/...``, not ``data/train2/...``),
    unless it names one object exactly. A key with ``..`` in its path is skipped: it never escapes the folder.
    """
    bucket, prefix = parse_s3_uri(uri)
    keys = list_keys(uri)
    base = prefix.rstrip("/")
    made: set[Path] = set()  # folders created so far: one mkdir per folder, not per object
    count = 0
    for key in keys:
        if key == base:
            rel = Path(key).name
        elif key.startswith(base + "/") or not base:
            rel = key[len(base):].lstrip("/")
        else:
            continue
        if not rel or rel.endswith("/") or ".." in rel.split("/"):
            continue
        target = dest / rel
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        target.write_bytes(_s3().get_object(bucket, key).value)
        count += 1
    return count


def read_object(uri: str) -> bytes:
    """One object's bytes; KeyError when it does not exist."""
    bucket, key = parse_s3_uri(uri)
    if key not in _bucket(bucket).keys:
        raise KeyError(uri)
    return _s3().get_object(bucket, key).value


def upload_file(path: Path, uri: str) -> None:
    bucket, key = parse_s3_uri(uri)
    _bucket(bucket)
    _s3().put_object(bucket, key, path.read_bytes())


def sync_up(folder: Path, uri: str, seen: dict[str, float]) -> int:
    """Upload the files of ``folder`` that changed since ``seen`` (path -> mtime) under ``uri``; returns the count."""
    n = 0
    base = uri.rstrip("/")
    for f in sorted(folder.rglob("*")):
        if not f.is_file() or f.name.startswith("."):
            continue  # temp files of atomic writes
        rel = f.relative_to(folder).as_posix()
        try:
            mtime = f.stat().st_mtime
        except FileNotFoundError:
            continue
        if seen.get(rel) == mtime:
            continue
        try:
            upload_file(f, f"{base}/{rel}")
        except FileNotFoundError:  # replaced while we looked
            continue
        seen[rel] = mtime
        n += 1
    return n


class LogStream:
    """One CloudWatch Logs stream, written in batches (what the SDK's log streaming reads)."""

    def __init__(self, region: str, group: str, stream: str) -> None:
        from moto.logs.models import logs_backends

        self.backend = logs_backends[ACCOUNT_ID][region]
        self.group, self.stream = group, stream
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        if group not in self.backend.groups:
            try:
                self.backend.create_log_group(group, tags={})
            except Exception:  # noqa: BLE001 - created by a concurrent job
                pass
        # a stream is named by the second its instance started (JOB/algo-1-EPOCH): a spot job restarted within
        # that second writes on to it, where creating it again failed the job
        self.backend.ensure_log_stream(group, stream)

    def write(self, line: str) -> None:
        with self._lock:
            self._pending.append({"timestamp": int(time.time() * 1000), "message": line})
            if len(self._pending) >= 200:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._pending:
            self.backend.put_log_events(self.group, self.stream, self._pending)
            self._pending = []

