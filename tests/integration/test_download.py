import hashlib
import io
import os
import shutil
import socket
import stat
import zipfile
from pathlib import Path

import pytest

from helpers import data
from helpers.config import RunConfig
from helpers.download import DownloadError, UnsafeArchiveError, download, safe_extract_zip

from .httpserver import FileServer

BLOB = os.urandom(3 * 1024 * 1024 + 123)


@pytest.fixture
def server():
    with FileServer() as s:
        s.state.files["/blob.bin"] = BLOB
        yield s


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_with_checksum(server, tmp_path):
    sha = hashlib.sha256(BLOB).hexdigest()
    out = download(f"{server.base}/blob.bin", tmp_path / "b.bin", sha256=sha, progress=False)
    assert out.read_bytes() == BLOB
    assert not (tmp_path / "b.bin.part").exists()
    download(f"{server.base}/blob.bin", out, sha256=sha, progress=False)  # already there and verified
    assert len(server.state.requests) == 1


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    with pytest.raises(DownloadError, match="Checksum mismatch"):
        download(f"{server.base}/blob.bin", tmp_path / "b.bin", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.reliability
def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.state.cut_after["/blob.bin"] = 1024 * 1024
    dest = tmp_path / "b.bin"
    with pytest.raises(DownloadError, match="resumes where it stopped"):
        download(f"{server.base}/blob.bin", dest, progress=False)
    assert not dest.exists() and (tmp_path / "b.bin.part").stat().st_size == 1024 * 1024
    download(f"{server.base}/blob.bin", dest, progress=False)
    assert dest.read_bytes() == BLOB
    assert server.state.requests[-1] == ("/blob.bin", f"bytes={1024 * 1024}-")


def test_restarts_when_the_server_ignores_ranges(server, tmp_path):
    server.state.ranges = False
    server.state.cut_after["/blob.bin"] = 5000
    dest = tmp_path / "b.bin"
    with pytest.raises(DownloadError):
        download(f"{server.base}/blob.bin", dest, progress=False)
    download(f"{server.base}/blob.bin", dest, progress=False)
    assert dest.read_bytes() == BLOB


def test_complete_part_file_is_finished(server, tmp_path):
    (tmp_path / "b.bin.part").write_bytes(BLOB)
    assert download(f"{server.base}/blob.bin", tmp_path / "b.bin", progress=False).read_bytes() == BLOB


def test_http_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server.base}/missing.zip", tmp_path / "m.zip", progress=False)


def test_offline_is_a_clear_message(tmp_path):
    dest = tmp_path / "d.zip"
    with pytest.raises(DownloadError) as e:
        download(f"http://127.0.0.1:{closed_port()}/d.zip", dest, progress=False)
    assert "offline" in str(e.value) and str(dest) in str(e.value)


def zip_of(root: Path, top: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                zf.write(f, f"{top}/{f.relative_to(root)}")
    return buf.getvalue()


def test_zip_dataset_from_url(server, work_dir, synthetic_root):
    server.state.files["/mine.zip"] = zip_of(synthetic_root, "mine")
    cfg = RunConfig(dataset=f"{server.base}/mine.zip", work_dir=str(work_dir))
    root = data.prepare_dataset(cfg, progress=False)
    assert root == work_dir / "datasets" / "mine" / "mine"
    assert data.validate_dataset(root, progress=False).usable
    assert data.prepare_dataset(cfg, progress=False) == root
    assert len(server.state.requests) == 1  # downloaded and extracted once


def test_dog_images_source_downloads_the_udacity_layout(server, work_dir, synthetic_root, monkeypatch):
    server.state.files["/dogImages.zip"] = zip_of(synthetic_root, "dogImages")
    monkeypatch.setattr(data, "DOG_IMAGES_URL", f"{server.base}/dogImages.zip")
    root = data.prepare_dataset(RunConfig(dataset="dogImages", work_dir=str(work_dir)), progress=False)
    assert root.name == "dogImages" and (root / "train" / "001.Affenpinscher").is_dir()


def test_dog_images_offline(work_dir, monkeypatch):
    monkeypatch.setattr(data, "DOG_IMAGES_URL", f"http://127.0.0.1:{closed_port()}/dogImages.zip")
    with pytest.raises(DownloadError, match="offline"):
        data.prepare_dataset(RunConfig(dataset="dogImages", work_dir=str(work_dir)), progress=False)


def write_zip(path: Path, entries: list[tuple[str, bytes, int | None]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload, mode in entries:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, payload)
    return path


@pytest.mark.parametrize(
    "entry, reason",
    [("../evil.txt", "'..' in path"), ("data/../../evil.txt", "'..' in path"), ("/etc/evil", "absolute path"),
     ("C:/evil.txt", "absolute path")],
)
@pytest.mark.reliability
def test_zip_slip_is_refused(tmp_path, entry, reason):
    archive = write_zip(tmp_path / "a.zip", [("ok/a.txt", b"a", None), (entry, b"x", None)])
    with pytest.raises(UnsafeArchiveError, match=reason):
        safe_extract_zip(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()


def test_symlinks_in_zip_are_refused(tmp_path):
    archive = write_zip(tmp_path / "a.zip", [("link", b"/etc/passwd", stat.S_IFLNK | 0o777)])
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract_zip(archive, tmp_path / "out", progress=False)


def test_safe_zip_extracts_atomically(tmp_path):
    archive = write_zip(tmp_path / "a.zip", [("top/a.txt", b"a", None), ("top/sub/b.txt", b"b", None)])
    out = safe_extract_zip(archive, tmp_path / "out", progress=False)
    assert (out / "top" / "sub" / "b.txt").read_bytes() == b"b"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_truncated_zip(tmp_path):
    archive = write_zip(tmp_path / "a.zip", [("top/a.txt", b"a" * 1000, None)])
    archive.write_bytes(archive.read_bytes()[:50])
    with pytest.raises(DownloadError, match="not a valid zip"):
        safe_extract_zip(archive, tmp_path / "out", progress=False)
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


def deflated_zip(path, members):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, payload in members:
            zf.writestr(name, payload)
    return path


@pytest.mark.reliability
def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    """A few KB that would expand to 50 MB of zeros: refused by its ratio, naming the member."""
    archive = deflated_zip(tmp_path / "bomb.zip", [("ok.txt", b"fine"), ("data/zeros.bin", b"\0" * 50_000_000)])
    assert archive.stat().st_size < 200_000
    with pytest.raises(UnsafeArchiveError, match=r"data/zeros.bin expands \d+x"):
        safe_extract_zip(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["bomb.zip"]
    # the total too: many members that each look harmless
    archive = deflated_zip(tmp_path / "many.zip", [(f"f{i}.bin", os.urandom(1000)) for i in range(50)])
    with pytest.raises(UnsafeArchiveError, match="expands to 0.0 GB, over the 0.0 GB limit; its member f20.bin takes"):
        safe_extract_zip(archive, tmp_path / "out", progress=False, max_bytes=20_000)


@pytest.mark.reliability
def test_a_member_that_writes_more_than_it_declares_is_stopped(tmp_path, monkeypatch):
    """A header that understates a member: the stream stops at the declared size and the member is refused."""
    archive = deflated_zip(tmp_path / "lying.zip", [("a.bin", os.urandom(300_000))])
    real = zipfile.ZipFile.infolist

    def understated(self):
        infos = real(self)
        for i in infos:
            i.file_size = 1000  # the header lies; the stream does not
        return infos

    monkeypatch.setattr(zipfile.ZipFile, "infolist", understated)
    with pytest.raises(DownloadError, match="a.bin"):
        safe_extract_zip(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.reliability
def test_a_corrupt_member_is_a_download_error_naming_it(tmp_path):
    archive = deflated_zip(tmp_path / "bad.zip", [("good.txt", b"fine"), ("pics/bad.png", os.urandom(20_000))])
    data = bytearray(archive.read_bytes())
    start = data.index(b"pics/bad.png") + len("pics/bad.png") + 100  # inside that member's compressed bytes
    data[start:start + 64] = bytes(64)
    archive.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="its member pics/bad.png cannot be read"):
        safe_extract_zip(archive, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
