"""The local profiler: what SageMaker's profiler records, written into the job's output folder.

While the training script runs it records, under ``OUTPUT/profiler/``:

- ``system.jsonl``: every ``interval`` (500 ms, like ``system_monitor_interval_millis=500``) the CPU
  use per core, memory, disk I/O and, when NVML finds a GPU, GPU utilisation and memory;
- ``steps.jsonl``: for every training step the time spent waiting for data and the time computing;
- ``trace.json`` and ``top_ops.json``: ``torch.profiler`` over a window of steps (a Chrome trace, and
  the operators with the most self time);
- ``meta.json``: cores, loader workers, batch size, device, process start and first-step times.

The files are plain JSON, written as the job runs (a crash keeps what was recorded) and uploaded
with the job's output on SageMaker, so :mod:`helpers.profiler_report` can analyse either backend.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SYSTEM_FILE = "system.jsonl"
STEPS_FILE = "steps.jsonl"
META_FILE = "meta.json"
TRACE_FILE = "trace.json"
TOP_OPS_FILE = "top_ops.json"


class _Nvml:
    """GPU utilisation and memory through NVML, or nothing when there is no GPU or driver."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # noqa: BLE001 - no library, no driver or no device: all mean "no GPU figures"
            self.handles = []

    def sample(self) -> list[dict[str, float]]:
        out = []
        for h in self.handles:
            try:
                util = self.nvml.nvmlDeviceGetUtilizationRates(h)
                mem = self.nvml.nvmlDeviceGetMemoryInfo(h)
                out.append({"util": float(util.gpu), "mem_used": float(mem.used), "mem_total": float(mem.total)})
            except Exception:  # noqa: BLE001 - a transient NVML error loses one sample, not the job
                out.append({})
        return out


class SystemSampler:
    """A daemon thread that appends one JSON line of system figures every ``interval_s`` seconds."""

    def __init__(self, path: str | os.PathLike[str], interval_s: float = 0.5) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="system-sampler", daemon=True)

    def __enter__(self) -> SystemSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        import psutil

        nvml = _Nvml()
        psutil.cpu_percent(percpu=True)  # the first calls only prime the counters
        psutil.cpu_times_percent()
        last_io = psutil.disk_io_counters()
        last_t = time.time()
        with open(self.path, "a", encoding="utf-8") as f:
            while not self._stop.wait(self.interval_s):
                now = time.time()
                io = psutil.disk_io_counters()
                dt = max(1e-6, now - last_t)
                mem = psutil.virtual_memory()
                times = psutil.cpu_times_percent()
                rec = {
                    "t": now,
                    "cpu": psutil.cpu_percent(percpu=True),
                    "iowait": float(getattr(times, "iowait", 0.0)),
                    "mem_percent": mem.percent,
                    "mem_used": mem.used,
                    "disk_read_bps": (io.read_bytes - last_io.read_bytes) / dt if io and last_io else 0.0,
                    "disk_write_bps": (io.write_bytes - last_io.write_bytes) / dt if io and last_io else 0.0,
                    "gpu": nvml.sample(),
                }
                f.write(json.dumps(rec) + "\n")
                f.flush()
                last_io, last_t = io, now


class StepTimer:
    """Splits each training step into waiting for data and computing; one JSON line per step.

    Call :meth:`batch_ready` when the loader has handed over a batch and :meth:`step_done` after the
    optimizer step. On a GPU the step is synchronised first, so compute time is real, not queued.
    """

    def __init__(self, path: str | os.PathLike[str], device: Any = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")
        self.device = device
        self.step = 0
        self.epoch = 0
        self._last_end = time.perf_counter()
        self._ready = self._last_end
        self.first_step_wall: float | None = None

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._last_end = time.perf_counter()

    def batch_ready(self) -> None:
        self._ready = time.perf_counter()

    def step_done(self, batch_size: int, gpu_mem: float | None = None) -> None:
        if self.device is not None and getattr(self.device, "type", "") == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            gpu_mem = float(torch.cuda.memory_allocated(self.device))
        end = time.perf_counter()
        if self.first_step_wall is None:
            self.first_step_wall = time.time()
        self._f.write(json.dumps({"step": self.step, "epoch": self.epoch, "t": time.time(),
                                  "data_s": self._ready - self._last_end, "compute_s": end - self._ready,
                                  "batch": batch_size, "gpu_mem": gpu_mem}) + "\n")
        self.step += 1
        self._last_end = end

    def close(self) -> None:
        self._f.close()


def torch_profile(out_dir: Path, device: Any, skip: int = 5, active: int = 5) -> Any:
    """A ``torch.profiler`` over steps ``skip+1 .. skip+active``: Chrome trace and top operators when done."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU]
    if getattr(device, "type", "") == "cuda":
        activities.append(ProfilerActivity.CUDA)

    def ready(prof: Any) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(out_dir / TRACE_FILE))
        rows = []
        for e in prof.key_averages():
            rows.append({"name": e.key, "calls": e.count, "self_cpu_us": e.self_cpu_time_total,
                         "cpu_total_us": e.cpu_time_total,
                         "self_device_us": float(getattr(e, "self_device_time_total", 0.0) or 0.0)})
        rows.sort(key=lambda r: r["self_cpu_us"] + r["self_device_us"], reverse=True)
        (out_dir / TOP_OPS_FILE).write_text(json.dumps({"steps": active, "ops": rows[:30]}, indent=1))

    return profile(activities=activities, schedule=schedule(wait=max(0, skip - 1), warmup=1, active=active, repeat=1),
                   on_trace_ready=ready, record_shapes=False)


def share_trace(prof_dir: Path, logdir: Path) -> Path | None:
    """The torch.profiler trace, also in a TensorBoard log folder as ``HOST.pt.trace.json`` (the name TensorBoard's
    PyTorch profiler plugin looks for; Perfetto and chrome://tracing open the same file). A hard link where it can."""
    trace = prof_dir / TRACE_FILE
    if not trace.is_file():
        return None
    dest = logdir / f"{os.environ.get('SM_CURRENT_HOST', 'algo-1')}.{time.time_ns()}.pt.trace.json"
    try:
        os.link(trace, dest)
    except OSError:
        import shutil

        shutil.copyfile(trace, dest)
    return dest


def process_start_time() -> float:
    import psutil

    return psutil.Process().create_time()
