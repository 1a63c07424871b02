"""One local SageMaker for a whole book run: started in the background on first use, found again by later
chapters, stopped by the runner's teardown.

Its state (S3 objects, jobs, endpoints) lives in that one process, so every chapter of a run must talk to
the same one. ``python -m helpers.emulator --state-file`` writes where it listens to
``<work_dir>/emulator/server.json``; :func:`ensure_running` reads it back, checks that the process is still
the emulator and answers, and otherwise starts a new one (an empty account: the chapters then say which
chapter to rerun).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

STATE_FILE = Path("emulator") / "server.json"
LOG_FILE = Path("emulator") / "server.log"


class EmulatorError(RuntimeError):
    """The local SageMaker could not be started or reached."""


@dataclass(frozen=True)
class Running:
    """A local SageMaker process and where it listens."""

    pid: int
    endpoint_url: str
    started: float

    def environ(self, region: str = "us-east-1") -> dict[str, str]:
        """Environment variables that point every AWS client (SDK, boto3, CLI) at it."""
        from helpers.emulator.server import CREDENTIALS

        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_DEFAULT_REGION": region, **CREDENTIALS}


def state_path(work_dir: str | os.PathLike[str]) -> Path:
    return Path(work_dir).resolve() / STATE_FILE


def _is_emulator(pid: int) -> bool:
    """Whether ``pid`` is alive and is a ``helpers.emulator`` process (a reused pid is not ours)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): alive is the best we can check
    return b"helpers.emulator" in cmdline


def _answers(url: str, timeout_s: float = 2.0) -> bool:
    """Whether something accepts connections at ``url`` (the process was checked to be the emulator)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s):
            return True
    except OSError:
        return False


def running(work_dir: str | os.PathLike[str]) -> Running | None:
    """The work directory's local SageMaker, if it is still up."""
    path = state_path(work_dir)
    try:
        state = json.loads(path.read_text())
        found = Running(int(state["pid"]), str(state["endpoint_url"]), float(state["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if _is_emulator(found.pid) and _answers(found.endpoint_url):
        return found
    return None


def ensure_running(work_dir: str | os.PathLike[str], timeout_s: float = 60.0) -> tuple[Running, bool]:
    """The work directory's local SageMaker, started in the background if none answers; ``(it, started_now)``."""
    if (found := running(work_dir)) is not None:
        return found, False
    work = Path(work_dir).resolve()
    state = work / STATE_FILE
    state.parent.mkdir(parents=True, exist_ok=True)
    state.unlink(missing_ok=True)
    log_path = work / LOG_FILE
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "helpers.emulator", "--port", "0", "--work-dir", str(work),
             "--state-file", str(state)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmulatorError(f"the local SageMaker exited with code {proc.returncode} at start-up: "
                                f"{_tail(log_path)}")
        if (found := running(work)) is not None:
            log.info("started the local SageMaker at %s (pid %d, log %s)", found.endpoint_url, found.pid, log_path)
            return found, True
        time.sleep(0.1)
    _terminate(proc.pid, 5)
    raise EmulatorError(f"the local SageMaker did not answer within {timeout_s:.0f} s: {_tail(log_path)}")


def stop(work_dir: str | os.PathLike[str], timeout_s: float = 60.0) -> bool:
    """Stop the work directory's local SageMaker (it ends its jobs, endpoints and functions first)."""
    path = state_path(work_dir)
    try:
        pid = int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    stopped = _is_emulator(pid) and _terminate(pid, timeout_s)
    path.unlink(missing_ok=True)
    return stopped


def _terminate(pid: int, timeout_s: float) -> bool:
    """SIGTERM, then SIGKILL to the whole process group after ``timeout_s``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return True


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return True


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) or "(no output)"
    except OSError:
        return "(no log)"
