"""The training entry point: SageMaker's PyTorch estimator runs it unchanged, the local backend runs it the same way.

Hyperparameters arrive as command-line arguments (``--lr 0.01 --batch_size 64``); data comes from the
``SM_CHANNEL_TRAIN/VALID/TEST`` folders, the model goes to ``SM_MODEL_DIR``, extra output to
``SM_OUTPUT_DATA_DIR`` and checkpoints to ``SM_CHECKPOINT_DIR`` (or ``/opt/ml/checkpoints`` on
SageMaker). Without SM_* variables it runs from plain flags, as on a bare EC2 instance::

    python train.py --data-dir DATA --model-dir MODEL --epochs 3 --lr 0.001

Metrics are printed in the one line format of :mod:`helpers.runtime.metrics`. Under ``torchrun`` (or
SageMaker's ``torch_distributed``) it trains with DDP; rank 0 writes checkpoints and artifacts.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from torch.utils.data.dataloader import default_collate

from helpers.runtime import debugger
from helpers.runtime.debugger import Instrumentation
from helpers.runtime.fileio import atomic_write, atomic_write_json, file_lock, remove_stale_temp_files
from helpers.runtime.layout import class_folders, find_split_dir, is_image, list_samples  # noqa: F401 - API
from helpers.runtime.metrics import format_metrics
from helpers.runtime.catalog import CPU_FP32_TRAINING
from helpers.runtime.models import (ModelConfig, ModelError, TransferModel, build_body, last_stage, make_head,
                                    save_model)
from helpers.runtime.presets import Preprocessing, decode_transform, eval_transform, normalize_transform, train_transform
from helpers.runtime.progress import bar
from helpers.runtime.settings import (TrainConfig, TrainingError, add_dataclass_flags,  # noqa: F401 - API
                                      str2bool, usable_cores)
from helpers.runtime.tracking import MlflowRun, TensorBoardLog, tensorboard_dir

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class JobPaths:
    train: Path
    valid: Path
    test: Path | None
    model_dir: Path
    output_dir: Path
    checkpoint_dir: Path | None
    tensorboard: Path | None = None  # event files (tracking.tensorboard_dir); None: no TensorBoard


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_paths(args: argparse.Namespace, env: Mapping[str, str]) -> JobPaths:
    """Flags win over SM_* variables; a ``--data-dir`` holds the split folders."""
    data_dir = Path(args.data_dir) if args.data_dir else None

    def split_dir(split: str, flag: str | None) -> Path | None:
        if flag:
            return Path(flag)
        if f"SM_CHANNEL_{split.upper()}" in env:
            return Path(env[f"SM_CHANNEL_{split.upper()}"])
        return find_split_dir(data_dir, split) if data_dir else None

    train, valid, test = split_dir("train", args.train), split_dir("valid", args.valid), split_dir("test", args.test)
    if train is None or valid is None:
        raise TrainingError(
            "No training data: pass --data-dir DIR (with train/ and valid/ inside), --train and --valid, "
            "or run with the SM_CHANNEL_TRAIN and SM_CHANNEL_VALID variables SageMaker sets."
        )
    model_dir = args.model_dir or env.get("SM_MODEL_DIR")
    if not model_dir:
        raise TrainingError("No model folder: pass --model-dir DIR or set SM_MODEL_DIR.")
    output_dir = args.output_dir or env.get("SM_OUTPUT_DATA_DIR") or str(Path(model_dir).parent / "output")
    return JobPaths(train, valid, test, Path(model_dir), Path(output_dir), checkpoint_dir(args.checkpoint_dir, env),
                    tensorboard_dir(env, Path(output_dir), bool(getattr(args, "tensorboard", False))))


def checkpoint_dir(flag: str | None, env: Mapping[str, str]) -> Path | None:
    """Where this job checkpoints: ``--checkpoint-dir``, else its own subfolder of the platform's folder.

    SageMaker restores everything under ``CheckpointConfig.S3Uri`` into every job that names it, so
    tuning trials and the final training that share one URI would resume each other's checkpoints.
    A subfolder named by ``TRAINING_JOB_NAME`` keeps them apart, and a restarted (spot) job, which
    keeps its name, still finds its own.
    """
    if flag:
        return Path(flag)
    on_sagemaker = "SM_TRAINING_ENV" in env or "SM_CURRENT_HOST" in env
    base = env.get("SM_CHECKPOINT_DIR") or ("/opt/ml/checkpoints" if on_sagemaker else None)
    if base is None:
        return None
    job = env.get("TRAINING_JOB_NAME")
    return Path(base) / job if job else Path(base)


def dist_info(env: Mapping[str, str]) -> DistInfo:
    """Rank and world size from the torchrun variables; SM_HOSTS without a launcher is refused."""
    world = int(env.get("WORLD_SIZE", "1"))
    hosts = json.loads(env.get("SM_HOSTS", "[]") or "[]")
    if world == 1 and len(hosts) > 1:
        raise TrainingError(
            f"SM_HOSTS lists {len(hosts)} hosts but no distributed launcher set WORLD_SIZE: create the "
            'estimator with distribution={"torch_distributed": {"enabled": True}}.'
        )
    return DistInfo(rank=int(env.get("RANK", "0")), world_size=world, local_rank=int(env.get("LOCAL_RANK", "0")))


def default_workers(local_world_size: int = 1) -> int:
    """DataLoader workers: the cores this process may use, shared between local ranks, at most 8."""
    cores = usable_cores()
    per_rank = cores // max(1, local_world_size)
    return 0 if per_rank <= 1 else min(8, per_rank)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16, AMX, Arm BF16): only then does bf16 pay off."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def autocast_dtype(device: torch.device, amp: bool, backbone: str = "",
                   training: bool = False) -> torch.dtype | None:
    """Mixed precision where it helps: float16 (with a gradient scaler) on CUDA, bfloat16 on a CPU that has
    it, except in a depthwise backbone's training steps on a CPU (``training``; see ``CPU_FP32_TRAINING``)."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type != "cpu" or not cpu_has_native_bf16():
        return None
    return None if training and backbone in CPU_FP32_TRAINING else torch.bfloat16


def pick_device(env: Mapping[str, str], local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available() and env.get("SM_NUM_GPUS", "1") != "0":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# Data


def sample_per_class(samples: list[tuple[str, int]], limit: int, seed: int) -> list[tuple[str, int]]:
    """At most ``limit`` samples of each label, a seeded random choice kept in listing order (0: all of them)."""
    import random

    if limit <= 0:
        return samples
    by_label: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(samples):
        by_label.setdefault(label, []).append(i)
    rng = random.Random(seed)
    keep = sorted(i for idx in by_label.values() for i in (rng.sample(idx, limit) if len(idx) > limit else idx))
    return [samples[i] for i in keep]


def require_usable(split: str, labels: Sequence[int], classes: Sequence[str], n_files: int) -> None:
    """Stop before training when a split cannot serve: a train class without one readable image (the model
    would be asked to predict a class it never saw), or a valid or test split with none."""
    if split == "train":
        seen = set(int(y) for y in labels)
        missing = [c for i, c in enumerate(classes) if i not in seen]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise TrainingError(f"train class(es) without a readable image: {shown}. The model could not learn "
                                "them: add images to those folders, or remove the folders.")
    elif not len(labels):
        raise TrainingError(f"no readable image in the {split} split ({n_files} file(s), none of them readable)")


def readable_labels(samples: list[tuple[str, int]]) -> list[int]:
    """The labels that have at least one image that decodes: one success per label ends its search (cheap on
    healthy data; a class whose every file is corrupt is tried file by file)."""
    from PIL import Image

    found: set[int] = set()
    for path, label in samples:
        if label in found:
            continue
        try:
            with Image.open(path) as im:
                im.draft(im.mode, (64, 64))  # JPEG: decode at a reduced scale, every block still read
                im.load()
            found.add(label)
        except Exception:  # noqa: BLE001 - the training loop skips such files; here they only count
            continue
    return sorted(found)


class ImageSamples(Dataset):
    """Images and labels; an unreadable image yields None, which :func:`collate_skip` drops."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                return self.transform(im), label
        except Exception as e:  # noqa: BLE001 - a bad file must not kill a training job
            log.warning("skipping unreadable image %s: %s", path, e)
            return None


def few_workers(workers: int, n_images: int) -> int:
    """No workers for a one-pass job of a few batches: starting them costs more than they save."""
    return workers if n_images > 256 else 0


def collate_skip(batch: list) -> Any:
    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None


class ShardSampler(torch.utils.data.Sampler[int]):
    """Each index exactly once over all ranks (rank r takes r, r + world, ...), in order.

    For evaluation: ``DistributedSampler`` pads every rank to the same length by repeating samples,
    which training needs (equal steps for DDP) but which would count those samples twice in a metric.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, n, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(ds: Dataset, batch_size: int, *, shuffle: bool, seed: int, dinfo: DistInfo, workers: int,
                pin: bool, collate: Callable = collate_skip) -> DataLoader:
    """Training (``shuffle``): an order that depends only on (seed, epoch), padded to equal steps per rank;
    call ``loader.sampler.set_epoch(epoch)``. Evaluation: every sample once (:class:`ShardSampler`)."""
    sampler = (DistributedSampler(ds, num_replicas=dinfo.world_size, rank=dinfo.rank, shuffle=True, seed=seed,
                                  drop_last=False) if shuffle
               else ShardSampler(len(ds), dinfo.rank, dinfo.world_size))
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin,
                      collate_fn=collate, persistent_workers=workers > 0)


# --------------------------------------------------------------------------------------------------
# Decoded-image cache (deterministic transforms)


class NormalizeBatch:
    """Collate cached uint8 images into a batch and normalize the whole batch at once."""

    def __init__(self, prep: Preprocessing) -> None:
        self.normalize = normalize_transform(prep)

    def __call__(self, batch: list) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = default_collate(batch)
        return self.normalize(x), y


def decode_splits(splits: Mapping[str, list[tuple[str, int]]], prep: Preprocessing, workers: int,
                  budget_bytes: int | None = None, processes: int = 1) -> dict[str, TensorDataset] | None:
    """Every image of every split decoded, resized and cropped once, kept as uint8 in memory.

    Returns None (the caller then decodes every epoch) when the images would take more than
    ``budget_bytes``; by default, half of the memory available now, shared by the ``processes``
    (local DDP ranks) that each hold a copy.
    """
    if budget_bytes is None:
        import psutil

        budget_bytes = psutil.virtual_memory().available // (2 * max(1, processes))
    need = sum(len(smp) for smp in splits.values()) * 3 * prep.image_size * prep.image_size
    if need > budget_bytes:
        log.warning("not caching the decoded images: %.1f GB would exceed the budget of %.1f GB; "
                    "decoding every epoch instead", need / 1e9, budget_bytes / 1e9)
        return None
    out = {}
    t0 = time.perf_counter()
    for split, smp in splits.items():
        loader = DataLoader(ImageSamples(smp, decode_transform(prep)), batch_size=64,
                            num_workers=few_workers(workers, len(smp)), collate_fn=collate_skip)
        xs, ys = [], []
        for batch in bar(loader, desc=f"decode {split}", unit="batch", progress=sys.stderr.isatty()):
            if batch is not None:
                xs.append(batch[0])
                ys.append(batch[1])
        if not xs:
            raise TrainingError(f"no readable image in the {split} split ({len(smp)} file(s), none of them readable)")
        out[split] = TensorDataset(torch.cat(xs), torch.cat(ys))
    log.info("decoded %d images once (%.0f MB of uint8 pixels) in %.1f s", sum(len(d) for d in out.values()),
             sum(d.tensors[0].numel() for d in out.values()) / 1e6, time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------------------------------
# Frozen-backbone feature cache


@functools.lru_cache(maxsize=8)
def _file_sha1(path: str, size: int, mtime_ns: int) -> str:
    """A file's sha1, read once per (path, size, mtime): every split's cache key names the same weights file."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def feature_key(samples: list[tuple[str, int]], cfg: TrainConfig, prep: Preprocessing,
                precision: torch.dtype | None = None) -> str:
    """Identifies (files, backbone, weights, preprocessing, precision): any change gives a new cache entry.

    Files count by content (class folder, name, bytes), not by where they are: every training job gets
    its own copy of a channel, and jobs that share a cache folder share the features of the same data.
    """
    h = hashlib.sha256()
    weights = cfg.weights
    if weights not in ("DEFAULT", "none"):  # by content: a job's copy of the weights channel is the same file
        st = os.stat(weights)
        weights = f"sha1:{_file_sha1(str(Path(weights).resolve()), st.st_size, st.st_mtime_ns)}"
    elif weights == "none":
        weights = f"random-seed{cfg.seed}"
    h.update(json.dumps([cfg.backbone, weights, prep.to_dict(), torch.__version__, str(precision)]).encode())
    for path, label in samples:
        p = Path(path)
        h.update(f"{p.parent.name}/{p.name}\0{label}\0".encode())
        h.update(hashlib.sha1(p.read_bytes(), usedforsecurity=False).digest())
    return h.hexdigest()[:20]


@torch.no_grad()
def extract_features(body: nn.Module, ds: Dataset, device: torch.device, batch_size: int, workers: int,
                     desc: str, *, amp_dtype: torch.dtype | None = None,
                     channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen body once over a dataset: (features, labels) on the CPU, in float32."""
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip,
                        pin_memory=device.type == "cuda")
    feats, labels = [], []
    body.eval()
    for batch in bar(loader, desc=desc, unit="batch", progress=sys.stderr.isatty()):
        if batch is None:
            continue
        x, y = _to_device(batch, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            f = body(x)
        feats.append(f.float().cpu())
        labels.append(y)
    if not feats:
        raise TrainingError(f"no readable image among the {len(ds)} file(s) it was given ({desc})")
    return torch.cat(feats), torch.cat(labels)


def cached_features(body: nn.Module, split: str, samples: list[tuple[str, int]], cfg: TrainConfig,
                    prep: Preprocessing, device: torch.device, workers: int, cache_dir: Path | None,
                    write: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of one split from the on-disk cache, or computed (and stored when ``write``)."""
    amp_dtype = autocast_dtype(device, cfg.amp)
    if cache_dir is None:
        return _compute_features(body, split, samples, cfg, prep, device, workers, amp_dtype, None)
    key = feature_key(samples, cfg, prep, amp_dtype)
    path = cache_dir / f"{cfg.backbone}-{prep.image_size}-{split}-{key}.pt"
    with _cache_lock(path):  # jobs sharing the folder: one computes, the others wait and load
        if path.is_file():
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
                log.info("features of %s from the cache %s", split, path.name)
                return blob["features"], blob["labels"]
            except Exception as e:  # noqa: BLE001 - a damaged cache entry is recomputed
                log.warning("ignoring damaged feature cache %s: %s", path, e)
        return _compute_features(body, split, samples, cfg, prep, device, workers, amp_dtype, path if write else None)


def _cache_lock(path: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on ``path``'s cache entry across processes (none where ``fcntl`` is missing)."""
    return file_lock(_cache_lock_file(path))


def _cache_lock_file(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _compute_features(body: nn.Module, split: str, samples: list[tuple[str, int]], cfg: TrainConfig,
                      prep: Preprocessing, device: torch.device, workers: int, amp_dtype: torch.dtype | None,
                      path: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    t0 = time.perf_counter()
    x, y = extract_features(body, ImageSamples(samples, eval_transform(prep)), device, max(64, cfg.batch_size),
                            few_workers(workers, len(samples)), f"features {split}", amp_dtype=amp_dtype,
                            channels_last=cfg.channels_last)
    log.info("computed %s features of %d %s images in %.1f s", tuple(x.shape[1:]), len(y), split,
             time.perf_counter() - t0)
    if path is not None:
        atomic_write(path, lambda f: torch.save({"features": x, "labels": y}, f))
    return x, y


# --------------------------------------------------------------------------------------------------
# The loop


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                    device: torch.device, scaler: torch.amp.GradScaler | None = None, desc: str = "train", *,
                    hook: Any = None, timer: Any = None, prof: Any = None, channels_last: bool = False,
                    amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss and accuracy over the samples this rank saw.

    ``hook`` (smdebug), ``timer`` (:class:`helpers.runtime.profiler.StepTimer`) and ``prof`` (torch.profiler)
    are optional instruments; without them this is the plain loop. ``amp_dtype`` runs the forward pass
    under autocast (see :func:`autocast_dtype`); ``scaler`` scales float16 losses.
    """
    model.train()
    debugger.train_mode(hook)
    loss_sum, correct, n = 0.0, 0, 0
    use_scaler = scaler is not None and scaler.is_enabled()
    for batch in bar(loader, desc=desc, unit="batch", leave=False, progress=sys.stderr.isatty()):
        if batch is None:
            continue
        if timer is not None:
            timer.batch_ready()
        x, y = _to_device(batch, device, channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x)
            loss = criterion(out, y)
        debugger.save_batch(hook, y, out)
        if use_scaler:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += (out.argmax(1) == y).sum().item()
        n += len(y)
        if timer is not None:
            timer.step_done(len(y))
        if prof is not None:
            prof.step()
    return {"loss": loss_sum / max(1, n), "accuracy": correct / max(1, n), "n": n}


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, loader: DataLoader, device: torch.device, num_classes: int,
             dinfo: DistInfo = DistInfo(), hook: Any = None, channels_last: bool = False,
             amp_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Loss, accuracy and per-class accuracy (summed over ranks under DDP)."""
    model.eval()
    debugger.eval_mode(hook)
    stats = torch.zeros(2, dtype=torch.float64)  # loss sum, samples
    per_class = torch.zeros(2, num_classes, dtype=torch.float64)  # correct, total
    for batch in loader:
        if batch is None:
            continue
        x, y = _to_device(batch, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x)
        stats[0] += criterion(out.float(), y).item() * len(y)  # through the criterion: the hook sees EVAL losses
        stats[1] += len(y)
        hit = (out.argmax(1) == y).cpu()
        per_class[0].index_add_(0, y.cpu(), hit.double())
        per_class[1].index_add_(0, y.cpu(), torch.ones(len(y), dtype=torch.float64))
    if dinfo.enabled:
        both = torch.cat([stats, per_class.flatten()]).to(device)
        dist.all_reduce(both)
        both = both.cpu()
        stats, per_class = both[:2], both[2:].view(2, num_classes)
    n = max(1.0, stats[1].item())
    acc = [(c / t) if t else float("nan") for c, t in zip(per_class[0].tolist(), per_class[1].tolist())]
    return {"loss": stats[0].item() / n, "accuracy": per_class[0].sum().item() / n, "per_class_accuracy": acc,
            "n": int(stats[1].item())}


def _to_device(batch: Any, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels on the device; images in channels-last layout when asked (faster convolutions)."""
    x, y = batch
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def _reduce_train(stats: dict[str, float], device: torch.device, dinfo: DistInfo) -> dict[str, float]:
    if not dinfo.enabled:
        return stats
    t = torch.tensor([stats["loss"] * stats["n"], stats["accuracy"] * stats["n"], stats["n"]], dtype=torch.float64,
                     device=device)
    dist.all_reduce(t)
    n = max(1.0, t[2].item())
    return {"loss": t[0].item() / n, "accuracy": t[1].item() / n, "n": int(t[2].item())}


# --------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a kill during the write leaves the previous checkpoint intact."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, cfg: TrainConfig, restart: bool,
                    data: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The checkpoint to resume from, None to start fresh. A corrupt one, or one written for other
    hyperparameters or other ``data`` (:func:`data_identity`), is an error naming the difference, unless
    ``restart``."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        problem = _resume_problem(state, _resume_identity(cfg), data)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
        state, problem = None, f"it is corrupt ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
    if problem is None:
        return state
    if restart:
        log.warning("Ignoring the checkpoint %s: %s; starting fresh (--restart)", path, problem)
        path.unlink(missing_ok=True)
        return None
    raise TrainingError(f"Cannot resume from the checkpoint {path}: {problem}. Delete it, or pass --restart "
                        "to start training from scratch.")


def _resume_problem(state: Mapping[str, Any], identity: Mapping[str, Any],
                    data: Mapping[str, Any] | None) -> str | None:
    """Why ``state`` is not this run's checkpoint, in words, or None."""
    theirs = state.get("hyperparameters") or {}
    if theirs != identity:
        diff = [f"{k}: {theirs.get(k)!r} there, {identity.get(k)!r} here" for k in sorted(set(theirs) | set(identity))
                if theirs.get(k) != identity.get(k)]
        return "it was written by a run with other hyperparameters (" + "; ".join(diff[:5]) + ")"
    if data is None:
        return None
    saved = state.get("data")
    if saved is None:
        return "it does not record which data it was trained on (an older checkpoint)"
    if list(saved["classes"]) != list(data["classes"]):
        gone = [c for c in saved["classes"] if c not in data["classes"]]
        new = [c for c in data["classes"] if c not in saved["classes"]]
        return (f"it was trained on other classes ({len(saved['classes'])} there, {len(data['classes'])} here"
                + (f"; only there: {', '.join(gone[:5])}" if gone else "")
                + (f"; only here: {', '.join(new[:5])}" if new else "") + ")")
    for split in ("train", "valid"):
        if saved.get(split) != data.get(split):
            return f"it was trained on other data: the {split} files differ (names or sizes)"
    return None


def data_identity(classes: Sequence[str], splits: Mapping[str, list[tuple[str, int]]],
                  roots: Mapping[str, Path]) -> dict[str, Any]:
    """What a checkpoint was trained on: the class names, and per split a fingerprint of its file listing
    (each file's path below the split folder and its size; cheap, and the same wherever the channel is)."""
    out: dict[str, Any] = {"classes": list(classes)}
    for split, samples in splits.items():
        h = hashlib.sha256()
        for path, label in sorted(samples):
            p = Path(path)
            h.update(f"{p.relative_to(roots[split]).as_posix()}\0{label}\0{p.stat().st_size}\n".encode())
        out[split] = h.hexdigest()[:24]
    return out


def _resume_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The hyperparameters that must match for a checkpoint to be resumable (not paths or workers)."""
    d = cfg.to_dict()
    for k in ("num_workers", "feature_cache", "use_feature_cache", "amp", "channels_last", "cache_images"):
        d.pop(k)
    return d


# --------------------------------------------------------------------------------------------------
# fit: everything the entry point does, callable in-process (tuning trials use it)


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] | None = None
    class_names: list[str] = field(default_factory=list)
    resumed_from: int = 0
    stopped_early: bool = False
    seconds: float = 0.0


def _check_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"The {what} {folder} is not writable ({e.strerror or e}).") from None


def fit(cfg: TrainConfig, paths: JobPaths, *, dinfo: DistInfo = DistInfo(), env: Mapping[str, str] | None = None,
        restart: bool = False, on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
        emit: Callable[[str], None] = lambda line: print(line, flush=True), write_artifacts: bool = True,
        instruments: Instrumentation = Instrumentation()) -> FitResult:
    """Train, validate each epoch, stop early, checkpoint, test the best model and write the artifact.

    ``on_epoch(epoch, row)`` is called after each epoch (a tuner reports and prunes there);
    ``write_artifacts=False`` skips the model and metrics files (tuning trials keep only their numbers).
    ``instruments`` turns on the Debugger hook and the profiler, which write under ``paths.output_dir``.
    """
    env = os.environ if env is None else env
    started = time.perf_counter()
    # Cheap checks first: nothing expensive happens before the inputs are known to be usable.
    classes = class_folders(paths.train)
    all_train = list_samples(paths.train, classes)
    train_samples = sample_per_class(all_train, cfg.max_per_class, cfg.seed)
    if len(train_samples) < len(all_train) and dinfo.is_main:
        log.info("training on %d of the %d train images (at most %d per class)", len(train_samples), len(all_train),
                 cfg.max_per_class)
    valid_samples = list_samples(paths.valid, classes)
    test_samples = list_samples(paths.test, classes) if paths.test and paths.test.is_dir() else None
    require_usable("train", [y for _, y in train_samples], classes, len(train_samples))  # empty class folders
    if dinfo.is_main and write_artifacts:
        _check_writable(paths.model_dir, "model folder")
        _check_writable(paths.output_dir, "output folder")
    ckpt_path = paths.checkpoint_dir / CHECKPOINT_FILE if paths.checkpoint_dir else None
    if ckpt_path is not None and dinfo.is_main:
        _check_writable(paths.checkpoint_dir, "checkpoint folder")
    if dinfo.is_main:  # what a killed writer left: in the checkpoint folder SageMaker would upload it
        folders = [paths.checkpoint_dir] if ckpt_path is not None else []
        folders += [paths.model_dir, paths.output_dir] if write_artifacts else []
        for folder in folders:
            if folder.is_dir() and (stale := remove_stale_temp_files(folder)):
                log.info("removed %d temp file(s) of an interrupted write in %s: %s", len(stale), folder.name,
                         ", ".join(stale))
        if cfg.feature_cache and Path(cfg.feature_cache).is_dir():  # shared: only entries no writer is at work on
            if stale := remove_stale_temp_files(cfg.feature_cache, lock_of=_cache_lock_file):
                log.info("removed %d temp file(s) of an interrupted feature-cache write: %s", len(stale),
                         ", ".join(stale))
    data_id = data_identity(classes, {"train": train_samples, "valid": valid_samples},
                            {"train": paths.train, "valid": paths.valid})
    state = load_checkpoint(ckpt_path, cfg, restart, data_id) if ckpt_path else None
    if dinfo.enabled:
        dist.barrier()  # rank 0 may have deleted a bad checkpoint under --restart

    device = pick_device(env, dinfo.local_rank)
    local_ranks = int(env.get("LOCAL_WORLD_SIZE", "1"))  # processes on this machine: they share cores and memory
    workers = default_workers(local_ranks) if cfg.num_workers < 0 else cfg.num_workers
    pin = device.type == "cuda"
    prep = Preprocessing.for_size(cfg.image_size, cfg.backbone)
    mcfg = ModelConfig(backbone=cfg.backbone, num_classes=len(classes), class_names=classes, head=cfg.head,
                       hidden=cfg.hidden, dropout=cfg.dropout, preprocessing=prep.to_dict())
    torch.manual_seed(cfg.seed)
    body, n_features = build_body(cfg.backbone, cfg.weights)
    torch.manual_seed(cfg.seed + 1)
    head = make_head(n_features, len(classes), cfg.head, cfg.hidden, cfg.dropout)
    model = TransferModel(body, head, freeze_backbone=cfg.freeze_backbone,
                          last_stage=last_stage(cfg.backbone, cfg.finetune)).to(device)
    if cfg.channels_last:  # faster convolutions (the frozen body's too, computing the cached features)
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = autocast_dtype(device, cfg.amp)  # the head on cached features too: the same numbers either way
    train_dtype = autocast_dtype(device, cfg.amp, cfg.backbone, training=cfg.trains_whole_backbone)
    if dinfo.is_main:
        log.info("%s (%s weights, %s backbone) -> %d classes on %s (%d threads), %d loader workers, "
                 "feature cache %s, autocast %s%s", cfg.backbone, cfg.weights,
                 "frozen" if cfg.freeze_backbone else f"trainable ({cfg.finetune})", len(classes), device, torch.get_num_threads(),
                 workers, "on" if cfg.uses_feature_cache else "off",
                 str(amp_dtype).removeprefix("torch.") if amp_dtype else "off",
                 "" if train_dtype == amp_dtype else " (float32 training steps: faster for this backbone)")

    splits = {"train": train_samples, "valid": valid_samples, **({"test": test_samples} if test_samples else {})}
    if cfg.uses_feature_cache:
        cache_dir = Path(cfg.feature_cache) if cfg.feature_cache else None
        feats = {s: cached_features(body, s, smp, cfg, prep, device, workers, cache_dir, dinfo.is_main)
                 for s, smp in splits.items()}
        for split, (_, labels) in feats.items():
            require_usable(split, labels.tolist(), classes, len(splits[split]))
        datasets: Mapping[str, Dataset] = {s: TensorDataset(*xy) for s, xy in feats.items()}
        trained, loader_workers, loader_pin, collate = model.head, 0, False, collate_skip
    else:
        trained, loader_pin = model, pin
        decoded = decode_splits(splits, prep, workers, processes=local_ranks) if cfg.uses_image_cache else None
        if decoded is not None:  # indexing a tensor: nothing left for loader workers to do
            for split, ds in decoded.items():
                require_usable(split, ds.tensors[1].tolist(), classes, len(splits[split]))
            datasets, loader_workers, collate = decoded, 0, NormalizeBatch(prep)
        else:
            for split, smp in splits.items():  # images decode every epoch: probe each class once, now
                require_usable(split, readable_labels(smp), classes, len(smp))
            datasets = {s: ImageSamples(smp, train_transform(prep, cfg.augment) if s == "train" else eval_transform(prep))
                        for s, smp in splits.items()}
            loader_workers, collate = workers, collate_skip
    loaders = {s: make_loader(ds, cfg.batch_size, shuffle=s == "train", seed=cfg.seed, dinfo=dinfo,
                              workers=loader_workers, pin=loader_pin, collate=collate) for s, ds in datasets.items()}

    net: nn.Module = trained
    if dinfo.enabled:
        net = nn.parallel.DistributedDataParallel(trained, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = (torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.optimizer == "adam"
                 else torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay))
    scaler = torch.amp.GradScaler("cuda", enabled=train_dtype == torch.float16)
    criterion = nn.CrossEntropyLoss()
    with _instruments(instruments, paths, trained, criterion, cfg, device, loader_workers,
                      isinstance(collate, NormalizeBatch), dinfo) as (hook, timer, prof, tb):
        run = _Run(model, trained, net, criterion, optimizer, scaler, train_dtype, amp_dtype, loaders,
                   classes, mcfg, device, hook, timer, prof, data_id, tb)
        return _train(cfg, paths, dinfo, run, state, ckpt_path, started, on_epoch, emit, write_artifacts)


@dataclass
class _Run:
    """What :func:`fit` built for the epochs: the model and its parts, the optimisation, data and instruments."""

    model: TransferModel
    trained: nn.Module  # the part that learns: the head on cached features, else the whole model
    net: nn.Module  # ``trained``, wrapped in DDP when distributed
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_dtype: torch.dtype | None  # autocast's dtype in the training steps, None for full precision
    amp_dtype: torch.dtype | None  # ... in evaluation
    loaders: dict[str, DataLoader]
    classes: list[str]
    mcfg: ModelConfig
    device: torch.device
    hook: Any
    timer: Any
    prof: Any
    data_id: dict[str, Any]  # what the checkpoints say they were trained on (data_identity)
    tb: TensorBoardLog | None = None


@contextlib.contextmanager
def _instruments(inst: Instrumentation, paths: JobPaths, trained: nn.Module, criterion: nn.Module, cfg: TrainConfig,
                 device: torch.device, workers: int, image_cache: bool, dinfo: DistInfo):
    """Start the hook, the profiler and TensorBoard (rank 0) and always stop them, so a crash keeps what they wrote."""
    from helpers.runtime import profiler

    hook = timer = prof = sampler = tb = None
    output_dir = paths.output_dir
    prof_dir = output_dir / "profiler"
    try:
        if paths.tensorboard is not None and dinfo.is_main:
            tb = TensorBoardLog(paths.tensorboard, trained)
        if inst.profiler and dinfo.is_main:
            prof_dir.mkdir(parents=True, exist_ok=True)
            meta = {"cores": usable_cores(),
                    "workers": workers, "batch_size": cfg.batch_size, "device": str(device),
                    "gpus": torch.cuda.device_count() if device.type == "cuda" else 0,
                    "feature_cache": cfg.uses_feature_cache, "image_cache": image_cache,
                    "interval_ms": inst.profiler_interval_ms,
                    "process_start": profiler.process_start_time(), "fit_start": time.time(),
                    "world_size": dinfo.world_size}
            atomic_write_json(prof_dir / profiler.META_FILE, meta)
            sampler = profiler.SystemSampler(prof_dir / profiler.SYSTEM_FILE, inst.profiler_interval_ms / 1000)
            sampler.start()
            timer = profiler.StepTimer(prof_dir / profiler.STEPS_FILE, device)
            prof = profiler.torch_profile(prof_dir, device, inst.profile_skip, inst.profile_steps)
            prof.start()
        if inst.debugger and dinfo.is_main:
            hook = debugger.make_hook(output_dir / debugger.TENSORS_DIR, trained, criterion, inst,
                                      frozen_body=cfg.freeze_backbone and not cfg.uses_feature_cache)
        yield hook, timer, prof, tb
    finally:
        if prof is not None:
            prof.stop()
        if tb is not None:
            tb.close()
            profiler.share_trace(prof_dir, tb.logdir)
        if sampler is not None:
            sampler.stop()
        if timer is not None:
            timer.close()
            meta_path = prof_dir / profiler.META_FILE
            meta = json.loads(meta_path.read_text())
            atomic_write_json(meta_path, {**meta, "first_step": timer.first_step_wall, "fit_end": time.time(),
                                          "steps": timer.step})
        if hook is not None:
            hook.close()


def _train(cfg: TrainConfig, paths: JobPaths, dinfo: DistInfo, run: _Run, state: dict[str, Any] | None,
           ckpt_path: Path | None, started: float, on_epoch: Callable[[int, dict[str, Any]], None] | None,
           emit: Callable[[str], None], write_artifacts: bool) -> FitResult:
    """The epochs, early stopping, checkpoints, the final evaluation and the artifact (see :func:`fit`)."""
    cl = cfg.channels_last and not cfg.uses_feature_cache
    result = FitResult(class_names=run.classes)
    best_loss, bad_epochs = math.inf, 0
    best_state = {k: v.detach().clone() for k, v in run.trained.state_dict().items()}
    start_epoch = 1
    if state is not None:
        run.trained.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
        best_state, best_loss = state["best_state"], state["best_loss"]
        bad_epochs, result.history = state["bad_epochs"], state["history"]
        result.best_epoch = state["best_epoch"]
        start_epoch = result.resumed_from = state["epoch"] + 1
        if dinfo.is_main:
            emit(f"resuming from the checkpoint of epoch {state['epoch']} ({ckpt_path})")
        if state.get("stopped_early"):
            start_epoch = cfg.epochs + 1
            result.stopped_early = True

    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed + epoch)  # augmentation randomness depends only on (seed, epoch)
        run.loaders["train"].sampler.set_epoch(epoch)
        if run.timer is not None:
            run.timer.start_epoch(epoch)
        tr = _reduce_train(train_one_epoch(run.net, run.criterion, run.optimizer, run.loaders["train"], run.device,
                                           run.scaler, desc=f"epoch {epoch}", hook=run.hook, timer=run.timer,
                                           prof=run.prof, channels_last=cl, amp_dtype=run.train_dtype),
                           run.device, dinfo)
        va = evaluate(run.trained, run.criterion, run.loaders["valid"], run.device, len(run.classes), dinfo,
                      hook=run.hook, channels_last=cl, amp_dtype=run.amp_dtype)
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_accuracy": tr["accuracy"], "valid_loss": va["loss"],
               "valid_accuracy": va["accuracy"], "seconds": time.perf_counter() - t0}
        result.history.append(row)
        if run.tb is not None:
            run.tb.epoch(epoch, row)
        if va["loss"] < best_loss:
            best_loss, bad_epochs, result.best_epoch = va["loss"], 0, epoch
            best_state = {k: v.detach().clone() for k, v in run.trained.state_dict().items()}
        else:
            bad_epochs += 1
        stop = cfg.patience > 0 and bad_epochs >= cfg.patience and epoch < cfg.epochs
        if dinfo.is_main:
            emit(format_metrics("train", epoch, loss=tr["loss"], accuracy=tr["accuracy"]))
            emit(format_metrics("valid", epoch, loss=va["loss"], accuracy=va["accuracy"]))
            if ckpt_path is not None:
                save_checkpoint(ckpt_path, {
                    "epoch": epoch, "model": run.trained.state_dict(), "optimizer": run.optimizer.state_dict(),
                    "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {}, "best_state": best_state,
                    "best_loss": best_loss, "best_epoch": result.best_epoch, "bad_epochs": bad_epochs,
                    "history": result.history, "hyperparameters": _resume_identity(cfg), "data": run.data_id,
                    "stopped_early": stop,
                })
                emit(f"checkpoint saved epoch={epoch}")
        if dinfo.enabled:
            dist.barrier()
        if on_epoch is not None:
            on_epoch(epoch, row)
        if stop:
            result.stopped_early = True
            if dinfo.is_main:
                emit(f"early stopping after epoch {epoch}: validation loss did not improve for {cfg.patience} epochs")
            break

    run.trained.load_state_dict(best_state)
    va = evaluate(run.trained, run.criterion, run.loaders["valid"], run.device, len(run.classes), dinfo,
                  channels_last=cl, amp_dtype=run.amp_dtype)
    result.best_valid = va
    if "test" in run.loaders:
        result.test = evaluate(run.trained, run.criterion, run.loaders["test"], run.device, len(run.classes), dinfo,
                               channels_last=cl, amp_dtype=run.amp_dtype)
    if dinfo.is_main:
        # The last valid line is the model that is kept: the value SageMaker's tuner and the local tuner read.
        emit(format_metrics("valid", "best", loss=va["loss"], accuracy=va["accuracy"]))
        if result.test is not None:
            emit(format_metrics("test", "final", loss=result.test["loss"], accuracy=result.test["accuracy"]))
        if run.tb is not None:
            final = {"loss/best_valid": va["loss"], "accuracy/best_valid": va["accuracy"]}
            if result.test is not None:
                final |= {"loss/test": result.test["loss"], "accuracy/test": result.test["accuracy"]}
            run.tb.scalars(final, result.best_epoch or 0)
    result.seconds = time.perf_counter() - started
    if dinfo.is_main and write_artifacts:
        save_model(run.model.cpu(), run.mcfg, paths.model_dir)
        write_code_slot(paths.model_dir, cfg.backbone)
        atomic_write_json(paths.output_dir / "metrics.json", {
            "class_names": run.classes, "history": result.history, "best_epoch": result.best_epoch,
            "valid": va, "test": result.test, "stopped_early": result.stopped_early,
            "resumed_from": result.resumed_from, "hyperparameters": cfg.to_dict(), "seconds": result.seconds,
        })
    return result


def write_code_slot(model_dir: Path, backbone: str) -> None:
    """What serves the model, on either container: ``code/`` (the runtime this job ran, with ``inference.py``
    for the PyTorch container) and ``config.yaml`` + ``deployment.py`` (for the Ray Serve container)."""
    from helpers.runtime.bundle import installed_requirements, write_bundle
    from helpers.runtime.serve_settings import write_ray_layout

    write_bundle(model_dir / "code", installed_requirements(backbone))
    write_ray_layout(model_dir)


# --------------------------------------------------------------------------------------------------
# Command line


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a torchvision transfer-learning classifier (SageMaker entry point).")
    add_dataclass_flags(p, TrainConfig)
    p.add_argument("--data-dir", help="folder holding train/ valid/ test/ (instead of SM_CHANNEL_*)")
    p.add_argument("--train", help="train split folder (default: SM_CHANNEL_TRAIN)")
    p.add_argument("--valid", help="valid split folder (default: SM_CHANNEL_VALID)")
    p.add_argument("--test", help="test split folder (default: SM_CHANNEL_TEST)")
    p.add_argument("--model-dir", "--model_dir", dest="model_dir", help="default: SM_MODEL_DIR")
    p.add_argument("--output-dir", "--output_dir", dest="output_dir", help="default: SM_OUTPUT_DATA_DIR")
    p.add_argument("--checkpoint-dir", "--checkpoint_dir", dest="checkpoint_dir",
                   help="default: SM_CHECKPOINT_DIR, or /opt/ml/checkpoints on SageMaker")
    p.add_argument("--restart", type=str2bool, nargs="?", const=True, default=False,
                   help="ignore an unusable checkpoint and start fresh")
    add_dataclass_flags(p, Instrumentation)
    return p


def resolve_weights(weights: str, env: Mapping[str, str]) -> str:
    """``weights`` as given, or, when it names a file of the ``weights`` channel, that file's path there."""
    if weights in ("DEFAULT", "none") or Path(weights).is_file() or "SM_CHANNEL_WEIGHTS" not in env:
        return weights
    shipped = Path(env["SM_CHANNEL_WEIGHTS"]) / Path(weights).name
    return str(shipped) if shipped.is_file() else weights


def write_failure(env: Mapping[str, str], message: str) -> None:
    """``/opt/ml/output/failure``: SageMaker shows its text as the job's ``FailureReason``."""
    out = env.get("SM_OUTPUT_DIR")
    if out and Path(out).is_dir():
        try:
            (Path(out) / "failure").write_text(message[:1024])
        except OSError:
            pass


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    args = get_args_parser().parse_args(argv)
    try:
        given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
        cfg = TrainConfig.from_dict({**given, "weights": resolve_weights(given["weights"], env)})
        paths = resolve_paths(args, env)
        dinfo = dist_info(env)
        inst = Instrumentation.from_mapping(vars(args))
    except (TrainingError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        write_failure(env, str(e))
        return 2
    log.info("hosts %s, current host %s, %s GPU(s), rank %d of %d", env.get("SM_HOSTS", "[]"),
             env.get("SM_CURRENT_HOST", "-"), env.get("SM_NUM_GPUS", "?"), dinfo.rank, dinfo.world_size)
    if dinfo.enabled:
        backend = "nccl" if torch.cuda.is_available() and env.get("SM_NUM_GPUS", "1") != "0" else "gloo"
        dist.init_process_group(backend)
    tracker = MlflowRun(env if dinfo.is_main else {}, emit=lambda line: print(line, flush=True))
    tracker.start({**cfg.to_dict(), **inst.hyperparameters()})
    status = "FAILED"
    try:
        result = fit(cfg, paths, dinfo=dinfo, env=env, restart=args.restart, instruments=inst,
                     on_epoch=tracker.log_epoch)
        track_result(tracker, result, paths)
        status = "FINISHED"
    except (TrainingError, ModelError) as e:  # a clear reason, never a traceback
        print(f"error: {e}", file=sys.stderr, flush=True)
        write_failure(env, str(e))
        return 2
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)
        if dinfo.enabled and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def track_result(tracker: MlflowRun, result: FitResult, paths: JobPaths) -> None:
    """The final numbers and the job's files on its MLflow run (the rules' and the profiler's reports, and the
    confusion matrix, are added by whoever computes them: :func:`helpers.tracking.log_to_job_run`)."""
    final = {"best_epoch": result.best_epoch, "epochs_trained": len(result.history), "seconds_total": result.seconds}
    if result.best_valid:
        final |= {"best_valid_loss": result.best_valid["loss"], "best_valid_accuracy": result.best_valid["accuracy"]}
    if result.test:
        final |= {"test_loss": result.test["loss"], "test_accuracy": result.test["accuracy"]}
    tracker.log_metrics(final)
    tracker.log_artifacts([paths.model_dir / "model_config.json", paths.output_dir / "metrics.json"])
    prof = paths.output_dir / "profiler"
    tracker.log_artifacts([prof / "top_ops.json", prof / "meta.json"], "profiler")


if __name__ == "__main__":
    sys.exit(main())
