"""Nothing the local SageMaker started outlives it, even when it is killed with -9.

A normal stop ends every job, model server and function process itself. A killed one cannot, and its
children would run on: a model server holding its memory and port, a training job writing checkpoints.
So the local SageMaker starts a small watchdog process, the reaper, and tells it the PID and start time
of every process it starts (:func:`adopt`). The reaper reads those lines from a pipe. When the pipe
closes without a ``stop`` line, the local SageMaker is gone: the reaper ends each adopted process that is
still the same process (same start time: a reused PID is left alone) with its descendants, SIGTERM first,
SIGKILL 5 s later.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from typing import Any

log = logging.getLogger(__name__)

GRACE_S = 5.0

_SCRIPT = r"""
import os, sys
import psutil

adopted, buf = {}, b""
fd = sys.stdin.fileno()
while chunk := os.read(fd, 65536):
    buf += chunk
    *lines, buf = buf.split(b"\n")
    for line in lines:
        if line == b"stop":
            sys.exit(0)
        pid, created = line.split()
        adopted[int(pid)] = float(created)
procs = []
for pid, created in adopted.items():
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - created) < 0.01:
            procs += [p, *p.children(recursive=True)]
    except psutil.Error:
        pass
for p in procs:
    try:
        p.terminate()
    except psutil.Error:
        pass
_, alive = psutil.wait_procs(procs, timeout=float(sys.argv[1]))
for p in alive:
    try:
        p.kill()
    except psutil.Error:
        pass
"""


class Reaper:
    """The watchdog of one local SageMaker: :meth:`adopt` each process it starts; :meth:`stop` when it stops."""

    def __init__(self, grace_s: float = GRACE_S) -> None:
        self.grace_s = grace_s
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self) -> "Reaper":
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", _SCRIPT, str(self.grace_s)],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)  # not in the group a Ctrl-C or a kill reaches
        return self

    def adopt(self, pid: int) -> None:
        """End ``pid`` (and what it started) if this local SageMaker dies without stopping it."""
        import psutil

        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            return  # already gone
        self._send(f"{pid} {created}\n")

    def stop(self) -> None:
        """A normal stop: the reaper leaves without ending anything."""
        if self.proc is None:
            return
        self._send("stop\n")
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _send(self, line: str) -> None:
        with self._lock:
            if self.proc is None or self.proc.stdin is None or self.proc.poll() is not None:
                return
            try:
                self.proc.stdin.write(line.encode())
                self.proc.stdin.flush()
            except OSError:
                log.warning("the reaper is gone: processes started now may outlive a killed local SageMaker")


_active: Reaper | None = None


def activate(reaper: Reaper | None) -> None:
    """The reaper :func:`adopt` reports to (one local SageMaker per process); ``None``: none."""
    global _active
    _active = reaper


def adopt(proc: Any) -> Any:
    """Have the active reaper end ``proc`` (a ``Popen``-like object, or a PID) if the local SageMaker is killed;
    returns ``proc``. Without an active reaper (a server started outside the local SageMaker), nothing."""
    if _active is not None:
        pid = proc if isinstance(proc, int) else getattr(proc, "pid", None)
        if pid:
            _active.adopt(pid)
    return proc
