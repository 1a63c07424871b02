"""A warm interpreter for training jobs: PyTorch imported once, each job a fresh fork of it.

Importing torch and torchvision takes about 3 s on a small CPU machine, longer than a tuning trial
on cached features trains. A training container has them installed, not imported; what it pays per job
is the import, and the service hides it behind minutes of instance start-up. Here that cost would be
most of a trial, so :class:`Zygote` imports the container's libraries once (never the job's own
code), and every job is a ``fork`` of it that then does what ``python script.py`` does: its own
session (process group), working folder, environment, ``sys.argv``, the script's folder first on
``sys.path``, and the script run as ``__main__``. Its output goes to the pipe the emulator reads.

:meth:`Zygote.spawn` returns a :class:`WarmProcess` with the parts of ``subprocess.Popen`` the
supervisor and the local endpoint use (``pid``, ``stdout``, ``poll``, ``wait``, ``terminate``, ``kill``,
``returncode``). The endpoints' model servers (``python -m helpers.serving``) fork from it too. A job
that needs another interpreter (torchrun, a shell command) still starts one with ``subprocess``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from helpers.emulator import reaper

log = logging.getLogger(__name__)

#: What the training container has installed and a job imports first (never the job's own modules). mlflow and
#: timm are the job's requirements.txt's, installed before the script runs: importing mlflow takes 3-4 s, a trial's
#: training time, and the SQLite store a local job tracks into 0.7 s more (SQLAlchemy and Alembic), per job.
PRELOAD = ("numpy", "PIL.Image", "torch", "torchvision", "timm", "mlflow", "mlflow.store.tracking.sqlalchemy_store")

#: The preloading thread's nice value: the chapters' own work goes first (the jobs it forks keep the usual 0).
PRELOAD_NICE = 10

# The zygote: one process, one thread once it has preloaded. It forks a job on each request, and reports each exit.
_ZYGOTE = r'''
import importlib, json, os, runpy, select, signal, socket, sys, threading, traceback

def preload():
    try:  # a low priority for this thread alone (on Linux a thread is its own task): the imports take 7 s of CPU
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)  # that the first chapter needs more
    except (AttributeError, OSError):
        pass
    for name in sys.argv[2:]:
        try:
            importlib.import_module(name)
        except Exception as e:  # a missing library fails in the job, as in the container
            print(f"warm interpreter: cannot preload {name}: {e}", file=sys.stderr, flush=True)

loader = threading.Thread(target=preload)  # the jobs fork from the main thread, at the normal priority
loader.start()
loader.join()
sock = socket.socket(fileno=int(sys.argv[1]))
sock.sendall(b'{"ready": true}\n')
buf, pending_fds = b"", []

def run_job(req, fd, started):
    os.setsid()
    os.write(started, b"x")  # the parent answers with our pid only now: a stop can signal our group
    os.close(started)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sock.close()
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    if "torch" in sys.modules:  # a new interpreter reads these at import; the preloaded torch must be told
        torch = sys.modules["torch"]
        n = os.environ.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(int(n) if n.isdigit() and int(n) > 0 else max(1, os.cpu_count() or 1))
    argv = list(req["argv"])
    module = argv[1] if argv[0] == "-m" else None
    sys.argv = [module] + argv[2:] if module else argv
    sys.path[0] = os.getcwd() if module else os.path.dirname(os.path.abspath(argv[0]))
    code = 0
    try:
        if module:  # python -m module: the working folder first on sys.path
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

while True:
    ready, _, _ = select.select([sock], [], [], 0.05)
    if ready:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 16)
        if not msg:
            break  # the emulator went away: end, leaving running jobs to it
        buf += msg
        pending_fds += fds
        while b"\n" in buf and pending_fds:
            line, buf = buf.split(b"\n", 1)
            req, fd = json.loads(line), pending_fds.pop(0)
            ready_r, ready_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                run_job(req, fd, ready_w)
            os.close(ready_w)
            os.read(ready_r, 1)
            os.close(ready_r)
            os.close(fd)
            sock.sendall(json.dumps({"id": req["id"], "pid": pid}).encode() + b"\n")
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        sock.sendall(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
'''


class WarmProcess:
    """A job forked from the zygote, with the ``Popen`` interface the supervisor and the endpoint use."""

    def __init__(self, pid: int, stdout: Any, zygote: Zygote) -> None:
        self.pid, self.stdout, self._zygote = pid, stdout, zygote
        self.returncode: int | None = None

    def send_signal(self, sig: int) -> None:
        """To the job's process group (it is its leader), as ``Popen(start_new_session=True)`` children get it."""
        if self.poll() is None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote._exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"warm job {self.pid}", timeout or 0)
            time.sleep(0.05)
        return self.returncode  # type: ignore[return-value]


class Zygote:
    """The warm interpreter; :meth:`start` returns at once, and :meth:`spawn` waits for it to be ready."""

    def __init__(self, preload: Sequence[str] = PRELOAD, ready_timeout_s: float = 120.0) -> None:
        self.preload, self.ready_timeout_s = tuple(preload), ready_timeout_s
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._ready = threading.Event()
        self._failed = False
        self._lock = threading.Lock()
        self._next_id = 0
        self._pids: dict[int, int] = {}  # request id -> pid
        self._pid_arrived = threading.Condition()
        self._codes: dict[int, int] = {}

    def start(self) -> Zygote:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._proc = reaper.adopt(subprocess.Popen(
            [sys.executable, "-u", "-E", "-s", "-c", f"NICE = {PRELOAD_NICE}\n{_ZYGOTE}", str(theirs.fileno()),
             *self.preload],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, start_new_session=True))
        theirs.close()
        self._sock = ours
        threading.Thread(target=self._read, name="warm-interpreter", daemon=True).start()
        return self

    def _read(self) -> None:
        assert self._sock is not None
        buf = b""
        while True:
            try:
                chunk = self._sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self._failed = True
                self._ready.set()
                with self._pid_arrived:
                    self._pid_arrived.notify_all()
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if msg.get("ready"):
                    self._ready.set()
                elif "exit" in msg:
                    self._codes[int(msg["exit"])] = int(msg["code"])
                else:
                    with self._pid_arrived:
                        self._pids[int(msg["id"])] = int(msg["pid"])
                        self._pid_arrived.notify_all()

    def _exit_code(self, pid: int) -> int | None:
        return self._codes.get(pid)

    def available(self) -> bool:
        """Ready to fork jobs (waits for the preload the first time); ``False`` when it failed."""
        if self._proc is None:
            return False
        self._ready.wait(self.ready_timeout_s)
        return self._ready.is_set() and not self._failed and self._proc.poll() is None

    def spawn(self, argv: Sequence[str], cwd: str | os.PathLike[str], env: Mapping[str, str],
              output: Any = None) -> WarmProcess:
        """Fork a job that runs ``python argv[0] argv[1:]`` (or ``python -m MODULE ...``) in ``cwd`` with exactly
        ``env``. Its output goes to a pipe (``.stdout``), or to ``output``, an open file."""
        if not self.available():
            raise RuntimeError("the warm interpreter is not running")
        assert self._sock is not None
        if output is not None:
            read_fd, write_fd = None, os.dup(output.fileno())
        else:
            read_fd, write_fd = os.pipe()
        try:
            with self._lock:
                self._next_id += 1
                req_id = self._next_id
                msg = json.dumps({"id": req_id, "argv": list(argv), "cwd": str(Path(cwd)), "env": dict(env)})
                socket.send_fds(self._sock, [msg.encode() + b"\n"], [write_fd])
        finally:
            os.close(write_fd)
        with self._pid_arrived:
            arrived = self._pid_arrived.wait_for(lambda: req_id in self._pids or self._failed, timeout=30)
            if not arrived or req_id not in self._pids:
                if read_fd is not None:
                    os.close(read_fd)
                raise RuntimeError("the warm interpreter did not start the job" if not arrived
                                   else "the warm interpreter ended")
            pid = self._pids.pop(req_id)
        stdout = open(read_fd, encoding="utf-8", errors="replace", newline=None) if read_fd is not None else None
        return WarmProcess(pid, stdout, self)

    def stop(self) -> None:
        """End the zygote (jobs it forked are the supervisor's to end)."""
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.terminate()
                self._proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
            self._proc = None
