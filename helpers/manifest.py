"""The run manifest: a JSON file in the work dir that each chapter reads and extends.

Stages, in order, and the chapter that records each::

    data      01_data           dataset location, splits, class names (and its S3 URI on SageMaker)
    hpo       02_hpo            best hyperparameters
    model     03_debug_profile  model artifact
    endpoint  04_deploy         endpoint name

Recording a stage drops every later one (new data invalidates the old hyperparameters, and so on).
Writes go through a temp file and an atomic rename, so a crash never leaves a half-written manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Iterator

from helpers.runtime.fileio import atomic_write_json

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
VERSION = 1
LEDGER_KEY = "ledger"  # helpers.ledger's part of the file: kept whatever happens to the stages

_lock = threading.Lock()  # S3 uploads record in threads: one writer at a time in this process


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)  # and with it the lock


@contextlib.contextmanager
def locked_manifest(path: Path) -> Iterator[dict[str, Any]]:
    """The manifest file's JSON, to read and change, under a lock held across threads and processes; written
    back (atomically) when changed. An unreadable file is a :class:`ManifestError`, never overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)  # the lock is on the work folder: no lock file left behind
    with _lock, contextlib.closing(_Fd(folder)):
        fcntl.flock(folder, fcntl.LOCK_EX)
        try:
            raw = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise ManifestError(f"The run manifest {path} is unreadable ({e}). Delete it and rerun the "
                                "chapters from 01_data.") from None
        before = json.dumps(raw, sort_keys=True, default=str)
        yield raw
        if json.dumps(raw, sort_keys=True, default=str) != before:
            atomic_write_json(path, raw)

#: stage -> chapter that records it, in workflow order.
STAGES: dict[str, str] = {
    "data": "01_data",
    "hpo": "02_hpo",
    "model": "03_debug_profile",
    "endpoint": "04_deploy",
}


class ManifestError(RuntimeError):
    """The manifest is unreadable or a chapter's prerequisite is missing."""


class PrerequisiteMissing(ManifestError):
    """A chapter ran before the chapter that records what it needs."""


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown manifest stage {stage!r}; stages are {', '.join(STAGES)}")


@dataclass
class Manifest:
    """In-memory view of ``work_dir/manifest.json``; every change is written through at once."""

    path: Path
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, work_dir: str | os.PathLike[str]) -> Manifest:
        """Read the manifest in ``work_dir`` (an empty one if there is none yet)."""
        path = Path(work_dir) / MANIFEST_NAME
        if not path.exists():
            return cls(path=path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            stages = raw.get("stages", {})  # a ledger alone: nothing recorded yet
            if not isinstance(stages, dict):
                raise TypeError("'stages' is not an object")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ManifestError(
                f"The run manifest {path} is unreadable ({e}). Delete it and rerun the chapters from 01_data."
            ) from None
        return cls(path=path, stages={k: v for k, v in stages.items() if k in STAGES})

    def get(self, stage: str) -> dict[str, Any] | None:
        _check_stage(stage)
        return self.stages.get(stage)

    def require(self, stage: str, **expected: Any) -> dict[str, Any]:
        """The stage's record, or :class:`PrerequisiteMissing` naming the chapter to run first.

        ``expected`` values must match the record (e.g. ``dataset="digits"``), so a chapter never
        silently continues from a run made with another dataset or backbone.
        """
        _check_stage(stage)
        chapter = STAGES[stage]
        record = self.stages.get(stage)
        if record is None:
            raise PrerequisiteMissing(
                f"This chapter needs the {stage!r} stage of the run manifest ({self.path}), "
                f"which is missing: run chapter {chapter} first."
            )
        for key, want in expected.items():
            have = record.get(key)
            if have != want:
                raise PrerequisiteMissing(
                    f"The manifest's {stage!r} stage was recorded with {key}={have!r}, but this run uses "
                    f"{key}={want!r}: run chapter {chapter} again with {key}={want!r} first."
                )
        return record

    def record(self, stage: str, values: dict[str, Any]) -> dict[str, Any]:
        """Store ``values`` as ``stage``, drop later stages, and write the file atomically."""
        _check_stage(stage)
        order = list(STAGES)
        dropped = [s for s in order[order.index(stage) + 1 :] if s in self.stages]
        entry = {**values, "recorded_at": datetime.now(UTC).isoformat(timespec="seconds")}
        stages = {s: v for s, v in self.stages.items() if s not in dropped}
        stages[stage] = entry
        self._write(stages)
        self.stages = stages
        if dropped:
            log.info("Recorded %s; dropped later stages %s, which depended on it", stage, ", ".join(dropped))
        return entry

    def clear(self, stage: str) -> None:
        """Remove one stage (e.g. after its endpoint was deleted)."""
        _check_stage(stage)
        if stage in self.stages:
            stages = {s: v for s, v in self.stages.items() if s != stage}
            self._write(stages)
            self.stages = stages

    def _write(self, stages: dict[str, dict[str, Any]]) -> None:
        with locked_manifest(self.path) as raw:  # the ledger in the same file stays as it is
            raw.update(version=VERSION, stages={s: stages[s] for s in STAGES if s in stages})

    def summary(self) -> str:
        """One line per stage: recorded or still missing."""
        lines = []
        for stage, chapter in STAGES.items():
            rec = self.stages.get(stage)
            lines.append(f"{stage:<9} {'recorded ' + rec['recorded_at'] if rec else 'missing'} (chapter {chapter})")
        return "\n".join(lines)
