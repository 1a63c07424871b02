"""HTTP download (progress, resume, checksum, atomic) and zip extraction that refuses unsafe entries."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from helpers.runtime.fileio import file_digest
from helpers.runtime.progress import bar

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download or extraction failed; the message says what to do next."""


class UnsafeArchiveError(DownloadError):
    """An archive holds absolute paths, ``..`` components or links (zip-slip)."""


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    The bytes go to ``dest.part`` first; an interrupted download resumes from there with an HTTP
    ``Range`` request (or restarts when the server ignores ranges). ``dest`` appears only once
    complete and, when ``sha256`` is given, verified. An existing ``dest`` is reused if it verifies.
    """
    dest = Path(dest)
    if dest.exists():
        if not sha256 or file_digest(dest) == sha256.lower():
            log.info("Using the already downloaded %s", dest)
            return dest
        log.warning("%s does not match the expected sha256; downloading it again", dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "sagebook"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part file is already complete
            return _finish(part, dest, sha256)
        raise DownloadError(f"Downloading {url} failed: the server answered HTTP {e.code} {e.reason}.") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"Could not download {url}: {reason}. This machine looks offline or the host is unreachable. "
            f"Download the file by hand, save it as {dest}, and run this step again."
        ) from None
    with resp:
        if offset and resp.status != 206:
            log.info("The server does not support resuming; restarting the download of %s", url)
            offset = 0
        length = resp.headers.get("Content-Length")
        total = int(length) + offset if length is not None else None
        done = offset
        try:
            with open(part, "ab" if offset else "wb") as f, bar(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, progress=progress,
            ) as pbar:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    done += len(chunk)
                    pbar.update(len(chunk))
        except (OSError, TimeoutError) as e:
            raise DownloadError(
                f"The download of {url} was interrupted after {done:,} bytes ({e}). "
                "Run the same step again: it resumes where it stopped."
            ) from None
    if total is not None and done < total:
        raise DownloadError(
            f"The download of {url} stopped at {done:,} of {total:,} bytes. "
            "Run the same step again: it resumes where it stopped."
        )
    return _finish(part, dest, sha256)


def _finish(part: Path, dest: Path, sha256: str | None) -> Path:
    if sha256:
        got = file_digest(part)
        if got != sha256.lower():
            part.unlink()
            raise DownloadError(
                f"Checksum mismatch for {dest.name}: expected sha256 {sha256.lower()}, got {got}. "
                "The partial file was deleted; check the URL and the expected checksum."
            )
    os.replace(part, dest)
    return dest


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name).parts:
        return "'..' in path"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    return None


def check_zip(archive: str | os.PathLike[str]) -> list[zipfile.ZipInfo]:
    """The archive's entries, or :class:`UnsafeArchiveError` listing every unsafe one."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile:
        raise DownloadError(
            f"{archive} is not a valid zip archive (a truncated download?). Delete it and run the step again."
        ) from None
    bad = [(i.filename, r) for i in infos if (r := _unsafe_reason(i))]
    if bad:
        shown = "\n  - ".join(f"{n} ({r})" for n, r in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise UnsafeArchiveError(
            f"Refusing to extract {archive}: {len(bad)} unsafe entr{'y' if len(bad) == 1 else 'ies'}:\n  - {shown}{more}"
        )
    return infos


#: Zip-bomb limits: all members together, and one member's expansion over its compressed size (members
#: under RATIO_FLOOR bytes are exempt: a tiny file can compress very well and harm nobody).
MAX_EXTRACTED_BYTES = 64 * 1024**3
MAX_RATIO = 200
RATIO_FLOOR = 1024**2


def _check_sizes(archive: str | os.PathLike[str], infos: list[zipfile.ZipInfo], dest: Path, max_bytes: int,
                 max_ratio: float) -> None:
    """Refuse what the archive says it would expand to, before writing anything."""
    for i in infos:
        if i.file_size > RATIO_FLOOR and i.file_size > max_ratio * max(1, i.compress_size):
            raise UnsafeArchiveError(
                f"Refusing to extract {archive}: {i.filename} expands {i.file_size / max(1, i.compress_size):.0f}x "
                f"({i.compress_size} to {i.file_size} bytes; the limit is {max_ratio:g}x), a zip bomb's signature.")
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        running = 0
        for crossing in infos:  # the member that takes the archive past the limit, and the largest one
            running += crossing.file_size
            if running > max_bytes:
                break
        largest = max(infos, key=lambda i: i.file_size)
        raise UnsafeArchiveError(
            f"Refusing to extract {archive}: it expands to {total / 1e9:.1f} GB, over the {max_bytes / 1e9:.1f} GB "
            f"limit; its member {crossing.filename} takes it past the limit (the largest: {largest.filename}, "
            f"{largest.file_size / 1e9:.1f} GB).")
    dest.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest.parent).free
    if total > free:
        raise DownloadError(f"{archive} expands to {total / 1e9:.1f} GB, and {dest.parent} has "
                            f"{free / 1e9:.1f} GB free. Free some space or choose another work_dir.")


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path, budget: list[int]) -> None:
    """One member, streamed: it may not write more than it declared, nor the archive more than ``budget``."""
    target = root / info.filename
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with zf.open(info) as src, open(target, "wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            budget[0] -= len(chunk)
            if written > info.file_size or budget[0] < 0:
                raise UnsafeArchiveError(f"Refusing to extract {zf.filename}: {info.filename} writes more than "
                                         "the archive declares (a zip bomb's signature).")
            out.write(chunk)


def safe_extract_zip(archive: str | os.PathLike[str], dest: str | os.PathLike[str], *, progress: bool = True,
                     max_bytes: int = MAX_EXTRACTED_BYTES, max_ratio: float = MAX_RATIO) -> Path:
    """Extract ``archive`` into ``dest`` atomically, after refusing absolute paths, ``..``, links and zip bombs
    (see :data:`MAX_EXTRACTED_BYTES`, :data:`MAX_RATIO`); a corrupt member is a :class:`DownloadError` naming it."""
    import zlib

    dest = Path(dest)
    infos = check_zip(archive)
    _check_sizes(archive, infos, dest, max_bytes, max_ratio)
    tmp = dest.with_name(f".{dest.name}.extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    budget = [max_bytes]
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in bar(infos, desc=f"extract {Path(archive).name}", unit="file", progress=progress):
                try:
                    _extract_member(zf, info, tmp, budget)
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
                    raise DownloadError(f"{archive} is damaged: its member {info.filename} cannot be read ({e}). "
                                        "Delete the archive and download it again.") from None
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
