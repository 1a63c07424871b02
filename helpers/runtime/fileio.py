"""Small filesystem primitives shared by every stage: atomic writes, content hashes and file locks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(file)`` on a temp file in the same folder, then rename it to ``path`` atomically.

    A crash at any point leaves either the old file or the new one, never a half-written file; two
    writers (threads or processes) never share a temp file. E.g. ``atomic_write(p, lambda f: torch.save(obj, f))``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temp_files(folder: str | os.PathLike[str],
                            lock_of: Callable[[Path], Path] | None = None) -> list[str]:
    """Delete the temp files of interrupted :func:`atomic_write` calls in ``folder`` (``.NAME.XXXX.tmp``): a killed
    writer leaves them, and SageMaker would upload those in a checkpoint folder. Call it before writing there.

    In a folder that several writers share, ``lock_of(final_path)`` names the lock file a writer of that file holds
    while it writes (:func:`file_lock`): a temp file whose lock is held is another writer's, at work, and stays."""
    removed = []
    for f in Path(folder).glob(".*.tmp"):
        if not f.is_file():
            continue
        final = f.with_name(f.name[1:].rsplit(".", 2)[0])
        with try_file_lock(lock_of(final)) if lock_of else contextlib.nullcontext(True) as free:
            if free:
                f.unlink(missing_ok=True)
                removed.append(f.name)
    return removed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Serialise ``obj`` as indented JSON and write it atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (created if missing) across processes and threads; none where
    ``fcntl`` is missing (Windows), where at worst two writers do the same work."""
    with _flock(path, wait=True):
        yield


@contextlib.contextmanager
def try_file_lock(path: str | os.PathLike[str]) -> Iterator[bool]:
    """:func:`file_lock` without waiting: yields whether it holds the lock (False where ``fcntl`` is missing, as it
    cannot tell)."""
    with _flock(path, wait=False) as held:
        yield held


@contextlib.contextmanager
def _flock(path: str | os.PathLike[str], wait: bool) -> Iterator[bool]:
    try:
        import fcntl
    except ImportError:
        yield wait
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
