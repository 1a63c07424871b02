"""Figures for the chapters. Each function takes results and returns a matplotlib ``Figure``.

Figures are built without pyplot, so nothing global changes and a notebook shows each one once
(with ``%matplotlib inline``) when it is the value of a cell.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from matplotlib.figure import Figure
from PIL import Image

if TYPE_CHECKING:
    from helpers.data import DatasetReport

SPLIT_COLORS = {"train": "#1f77b4", "valid": "#ff7f0e", "test": "#2ca02c"}
#: The width of the book's text column at a 1200 px window: wider figures are scaled down to it.
BOOK_COLUMN_PX = 624
#: The smallest text the book shows, in CSS pixels.
MIN_TEXT_PX = 10.0


def readable(fig: Figure, column_px: int = BOOK_COLUMN_PX, min_px: float = MIN_TEXT_PX) -> Figure:
    """Enlarge every text of ``fig`` that the book's column would show smaller than ``min_px`` pixels (a wide
    figure is scaled down to the column, its text with it), tick labels included."""
    from matplotlib.text import Text

    scale = min(1.0, column_px / (fig.get_figwidth() * fig.dpi))
    floor = min_px * 72 / (fig.dpi * scale)  # points
    for ax in fig.axes:
        ax.tick_params(which="both", labelsize=max(floor, _tick_size(ax)))
    for t in fig.findobj(Text):
        if t.get_fontsize() < floor:
            t.set_fontsize(floor)
    return fig


def _tick_size(ax: Any) -> float:
    labels = ax.get_xticklabels() + ax.get_yticklabels()
    return min((t.get_fontsize() for t in labels), default=0.0)


def for_the_book(make: Callable[..., Figure | None]) -> Callable[..., Figure | None]:
    """A figure function whose figure the book shows with every text at 10 px or more (:func:`readable`)."""
    @functools.wraps(make)
    def wrapper(*args: Any, **kwargs: Any) -> Figure | None:
        fig = make(*args, **kwargs)
        return readable(fig) if fig is not None else None
    return wrapper


@for_the_book
def class_counts(report: DatasetReport, max_labels: int = 40) -> Figure:
    """Images per class, stacked by split; class labels are shown when there are few enough."""
    from helpers.data import display_name

    classes = report.classes
    fig = Figure(figsize=(min(14, 3 + 0.35 * len(classes)) if len(classes) <= max_labels else 12, 4),
                 layout="tight")
    ax = fig.subplots()
    bottom = [0] * len(classes)
    for name, split in report.splits.items():
        vals = [split.class_counts.get(c, 0) for c in classes]
        ax.bar(range(len(classes)), vals, bottom=bottom, label=f"{name} ({split.total:,})",
               color=SPLIT_COLORS.get(name), width=0.8)
        bottom = [b + v for b, v in zip(bottom, vals)]
    if len(classes) <= max_labels:
        ax.set_xticks(range(len(classes)), [display_name(c) for c in classes], rotation=60, ha="right", fontsize=8)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(classes)} classes (in label order)")
    ax.set_ylabel("images")
    ax.legend(frameon=False, ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax.set_title("Images per class and split", pad=28)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


@for_the_book
def sample_grid(report: DatasetReport, split: str = "train", max_classes: int = 12, per_class: int = 8) -> Figure:
    """A grid of example images: one row per class (up to ``max_classes``), labelled with its name."""
    from helpers.data import display_name

    rep = report.splits[split]
    classes = [c for c in report.classes if rep.files.get(c)]
    if len(classes) > max_classes:
        step = len(classes) / max_classes
        classes = [classes[int(i * step)] for i in range(max_classes)]
    fig = Figure(figsize=(0.9 * per_class + 1.6, 0.95 * len(classes) + 0.5), layout="tight")
    axes = fig.subplots(len(classes), per_class, squeeze=False)
    for row, cls in zip(axes, classes):
        files = rep.files[cls]
        for k, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
            if k < len(files):
                with Image.open(Path(report.root) / files[k]) as im:
                    im.draft("RGB", (160, 160))
                    ax.imshow(im.convert("RGB"))
        row[0].set_ylabel(display_name(cls), rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"Sample {split} images ({len(classes)} of {len(report.classes)} classes)")
    return fig


@for_the_book
def size_distribution(report: DatasetReport) -> Figure | None:
    """Image width and height: a scatter with marginal histograms folded into two panels; None when every image
    has the same size (a single point says nothing: the chapter says the size instead)."""
    if len(set(zip(report.widths, report.heights))) <= 1:
        return None
    fig = Figure(figsize=(10, 3.6), layout="tight")
    ax1, ax2 = fig.subplots(1, 2)
    w, h = report.widths, report.heights
    ax1.scatter(w, h, s=6, alpha=0.4)
    ax1.set_xlabel("width (px)")
    ax1.set_ylabel("height (px)")
    ax1.set_title("Image sizes")
    bins = max(5, min(50, int(math.sqrt(len(w) or 1))))
    ax2.hist([w, h], bins=bins, label=["width", "height"], alpha=0.8)
    ax2.set_xlabel("pixels")
    ax2.set_ylabel("images")
    ax2.set_title("Width and height distribution")
    ax2.legend(frameon=False)
    for ax in (ax1, ax2):
        ax.spines[["top", "right"]].set_visible(False)
    return fig


STATE_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#bbbbbb", "FAIL": "#d62728", "RUNNING": "#ff7f0e"}


@for_the_book
def tuning_history(trials, objective: str = "valid:accuracy") -> Figure:
    """Objective per trial (pruned trials at their last reported value) with the best-so-far line."""
    fig = Figure(figsize=(8, 3.6), layout="tight")
    ax = fig.subplots()
    for state, group in trials.groupby("state"):
        ax.scatter(group.number, group.value, label=f"{state.lower()} ({len(group)})",
                   color=STATE_COLORS.get(state, "k"), s=30, zorder=3)
    done = trials[trials.state == "COMPLETE"].sort_values("number")
    if len(done):
        ax.step(done.number, done.value.cummax(), where="post", color="#2ca02c", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title("Objective per trial")
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


@for_the_book
def tuning_parameters(trials, params: tuple[str, ...] = ("lr", "batch_size", "epochs"),
                      objective: str = "valid:accuracy") -> Figure:
    """The objective against each tuned parameter (log scale for the learning rate)."""
    params = tuple(p for p in params if p in trials)
    fig = Figure(figsize=(3.4 * len(params), 3.2), layout="tight")
    axes = fig.subplots(1, len(params), squeeze=False)[0]
    for ax, p in zip(axes, params):
        for state, group in trials.groupby("state"):
            ax.scatter(group[p], group.value, color=STATE_COLORS.get(state, "k"), s=24, label=state.lower())
        if p == "lr":
            ax.set_xscale("log")
        ax.set_xlabel(p)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel(objective)
    axes[-1].legend(frameon=False, fontsize=8)
    fig.suptitle("Objective by hyperparameter")
    return fig


@for_the_book
def parallel_coordinates(trials, params: tuple[str, ...] = ("lr", "batch_size", "epochs"),
                         objective: str = "valid:accuracy") -> Figure:
    """One line per trial across its hyperparameters and objective, coloured by the objective (grey: no value).

    Each axis is scaled to its own range (the learning rate on a log scale), so where the good trials cross
    each axis shows which part of the range they favour.
    """
    import numpy as np
    from matplotlib import colormaps

    params = tuple(p for p in params if p in trials)
    axes_names = [*params, "value"]
    fig = Figure(figsize=(2.2 * len(axes_names) + 1.5, 3.6), layout="tight")
    ax = fig.subplots()

    def scaled(column: str):
        v = trials[column].astype(float).to_numpy()
        if column == "lr":
            v = np.log10(v)
        lo, hi = np.nanmin(v), np.nanmax(v)
        return (v - lo) / (hi - lo) if hi > lo else np.full_like(v, 0.5), lo, hi

    scaled_cols = {c: scaled(c) for c in axes_names}
    values = trials["value"].astype(float).to_numpy()
    finite = values[np.isfinite(values)]
    lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
    cmap = colormaps["viridis"]
    for i in np.argsort(np.nan_to_num(values, nan=-np.inf)):  # the best trials drawn last, on top
        ys = [scaled_cols[c][0][i] for c in axes_names]
        good = np.isfinite(values[i])
        ax.plot(range(len(axes_names)), ys, color=cmap((values[i] - lo) / (hi - lo) if good and hi > lo else 1.0)
                if good else "#bbbbbb", lw=2 if good else 1, alpha=0.9 if good else 0.6, marker="o", ms=3)
    for x, c in enumerate(axes_names):
        ax.axvline(x, color="#444444", lw=0.8)
        _, a, b = scaled_cols[c]
        fmt = (lambda t: f"{10 ** t:.1e}") if c == "lr" else (lambda t: f"{t:.3g}")
        ax.text(x, -0.08, fmt(a), ha="center", va="top", fontsize=8)
        ax.text(x, 1.08, fmt(b), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(axes_names)), [*params, objective])
    ax.set_yticks([])
    ax.set_ylim(-0.2, 1.2)
    ax.spines[["top", "right", "left"]].set_visible(False)
    ax.set_title("Each trial across its hyperparameters (colour: objective; grey: stopped before reporting one)",
                 fontsize=10)
    return fig


@for_the_book
def starts(table) -> Figure:
    """The comparison of starts: validation accuracy (bars) and training seconds (labels) per start."""
    fig = Figure(figsize=(8, 0.55 * len(table) + 1.2), layout="tight")
    ax = fig.subplots()
    labels = list(table.index)[::-1]
    acc = [float(table.loc[k, "valid accuracy"]) for k in labels]
    colors = ["#bbbbbb" if k.startswith("random") else "#1f77b4" if "frozen" in k else "#ff7f0e" for k in labels]
    bars = ax.barh(labels, acc, color=colors)
    for bar, k in zip(bars, labels):
        ax.annotate(f"{bar.get_width():.1%}, {float(table.loc[k, 'seconds']):.0f} s",
                    (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(4, 0),
                    textcoords="offset points", va="center")
    ax.set_xlim(0, 1.18)
    ax.set_xlabel("validation accuracy (label: accuracy, training seconds)")
    ax.set_title("Which start? Grey: random weights; blue: frozen; orange: fine-tuned")
    ax.spines[["top", "right"]].set_visible(False)
    return fig


@for_the_book
def epochs_and_steps(curves, steps: dict) -> Figure:
    """Left: the per-epoch loss MLflow recorded for the run. Right: the per-step loss of the Debugger trial."""
    fig = Figure(figsize=(10, 3.4), layout="tight")
    left, right = fig.subplots(1, 2)
    for col, color in (("train_loss", SPLIT_COLORS["train"]), ("valid_loss", SPLIT_COLORS["valid"])):
        if col in curves:
            left.plot(curves.index, curves[col], marker="o", color=color, label=col.replace("_", " "))
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.set_title("Per epoch (MLflow run)")
    _draw_step_losses(right, steps)
    right.set_title("Per saved step (Debugger trial)")
    left.legend(frameon=False, fontsize=8)
    left.spines[["top", "right"]].set_visible(False)
    return fig


@for_the_book
def system_usage(samples: list[dict]) -> Figure:
    """CPU per core, memory and disk I/O over time (and GPU utilisation and memory when recorded)."""
    import numpy as np

    has_gpu = any(s.get("gpu") for s in samples)
    rows = 3 + (1 if has_gpu else 0)
    fig = Figure(figsize=(10, 2.2 * rows), layout="tight")
    axes = fig.subplots(rows, 1, sharex=True)
    if not samples:
        axes[0].text(0.5, 0.5, "no samples recorded", ha="center", transform=axes[0].transAxes)
        return fig
    t0 = samples[0]["t"]
    t = [s["t"] - t0 for s in samples]
    cpu = np.array([s["cpu"] for s in samples])
    for i in range(cpu.shape[1]):
        axes[0].plot(t, cpu[:, i], lw=0.8, label=f"core {i}")
    axes[0].set_ylabel("CPU %")
    axes[0].set_ylim(0, 105)
    axes[0].legend(frameon=False, fontsize=7, ncols=min(8, cpu.shape[1]), loc="lower right")
    axes[1].plot(t, [s["mem_percent"] for s in samples], color="#9467bd")
    axes[1].set_ylabel("memory %")
    axes[2].plot(t, [s["disk_read_bps"] / 1e6 for s in samples], label="read")
    axes[2].plot(t, [s["disk_write_bps"] / 1e6 for s in samples], label="write")
    axes[2].set_ylabel("disk MB/s")
    axes[2].legend(frameon=False, fontsize=7)
    if has_gpu:
        n = max(len(s.get("gpu") or []) for s in samples)
        for i in range(n):
            util = [(s.get("gpu") or [{}] * n)[i].get("util", np.nan) for s in samples]
            axes[3].plot(t, util, label=f"GPU{i} util")
        axes[3].set_ylabel("GPU %")
        axes[3].legend(frameon=False, fontsize=7)
    axes[-1].set_xlabel("seconds since the sampler started")
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
    return fig


@for_the_book
def step_times(steps: list[dict]) -> Figure:
    """Each training step split into waiting for data and computing, and the step-duration histogram."""
    fig = Figure(figsize=(10, 3.2), layout="tight")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=(2, 1))
    idx = [s["step"] for s in steps]
    data = [1e3 * s["data_s"] for s in steps]
    compute = [1e3 * s["compute_s"] for s in steps]
    ax1.bar(idx, compute, width=1.0, color="#1f77b4", label="compute")
    ax1.bar(idx, data, width=1.0, bottom=compute, color="#ff7f0e", label="waiting for data")
    ax1.set_xlabel("training step")
    ax1.set_ylabel("ms")
    ax1.legend(frameon=False, fontsize=8)
    ax2.hist([d + c for d, c in zip(data, compute)], bins=30, color="#7f7f7f")
    ax2.set_xlabel("step duration (ms)")
    ax2.set_ylabel("steps")
    for ax in (ax1, ax2):
        ax.spines[["top", "right"]].set_visible(False)
    return fig


@for_the_book
def loss_per_step(curves: dict) -> Figure:
    """Training loss per saved step, and validation loss per batch with its mean per evaluation."""
    fig = Figure(figsize=(8, 3.4), layout="tight")
    ax = fig.subplots()
    _draw_step_losses(ax, curves)
    ax.set_ylabel("CrossEntropyLoss_output_0")
    ax.set_title("Loss per step (Debugger trial)")
    return fig


def _draw_step_losses(ax, curves: dict) -> None:
    import numpy as np

    steps, values = curves.get("train", ([], []))
    ax.plot(steps, values, lw=1, label="train")
    vsteps, vvalues = curves.get("valid", ([], []))
    if vsteps:
        ax.scatter(vsteps, vvalues, s=8, color="#ff7f0e", alpha=0.4, label="valid (per batch)")
        breaks = np.flatnonzero(np.diff(vsteps) > 1) + 1  # consecutive EVAL steps form one evaluation
        groups = np.split(np.arange(len(vsteps)), breaks)
        ax.plot([vsteps[g[-1]] for g in groups], [float(np.mean(np.asarray(vvalues)[g])) for g in groups],
                marker="o", color="#d62728", lw=1.5, label="valid (mean per evaluation)")
    ax.set_xlabel("step")
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)


@for_the_book
def gradient_norms(norms: dict) -> Figure:
    """L2 norm of each layer's gradient over training steps (log scale)."""
    fig = Figure(figsize=(8, 3.6), layout="tight")
    ax = fig.subplots()
    for name, (steps, values) in norms.items():
        ax.plot(steps, values, lw=1, label=name.replace("TransferModel_", ""))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient L2 norm")
    ax.set_title("Gradient norms per layer")
    ax.legend(frameon=False, fontsize=7, ncols=2)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


@for_the_book
def weight_distributions(weights: dict, max_layers: int = 4) -> Figure:
    """Histogram of each saved weight tensor at its first and last saved step."""
    names = list(weights)[:max_layers]
    fig = Figure(figsize=(3.3 * max(1, len(names)), 3), layout="tight")
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    for ax, name in zip(axes, names):
        first, last, s0, s1 = weights[name]
        ax.hist(last, bins=40, alpha=0.5, color="#ff7f0e", label=f"step {s1}")
        ax.hist(first, bins=40, histtype="step", lw=1.8, color="#1f77b4", label=f"step {s0}", zorder=3)
        ax.set_title(name.replace("TransferModel_", ""), fontsize=9)
        ax.legend(frameon=False, fontsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle("Weight distributions, first vs last step")
    return fig


@for_the_book
def confusion_matrix(cm, names: list[str], max_labels: int = 30) -> Figure:
    """Confusion matrix (rows true, columns predicted), row-normalised colours with counts."""
    import numpy as np

    k = len(names)
    size = min(12, 2.5 + 0.45 * k)
    fig = Figure(figsize=(size, size * 0.9), layout="tight")
    ax = fig.subplots()
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= max_labels:
        ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    if cm[i, j]:
                        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                                color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test split)")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    return fig


def rendered_text_px(fig: Figure, column_px: int = BOOK_COLUMN_PX) -> float:
    """The height in CSS pixels of the figure's smallest visible text when the book shows it (the image scaled
    down to the column's width, never up). The book wants 10 or more."""
    from matplotlib.text import Text

    fig.canvas.draw()  # lays out the figure (tight layout) before sizes are read
    scale = min(1.0, column_px / (fig.get_figwidth() * fig.dpi))
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    return min(sizes, default=float("inf")) * fig.dpi / 72 * scale


@for_the_book
def prediction_gallery(images: list, predictions: list[list[dict]], truths: list[str] | None = None,
                       cols: int = 3, title: str = "Predictions") -> Figure:
    """Each image beside its top labels; the title is green when the first label is right, red when wrong."""
    import io

    n = len(images)
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(2.6 * cols, 1.9 * rows), layout="tight")
    axes = fig.subplots(rows, 2 * cols, squeeze=False, width_ratios=[1, 1.2] * cols)
    for k in range(rows * cols):
        ax_img, ax_txt = axes[k // cols][2 * (k % cols)], axes[k // cols][2 * (k % cols) + 1]
        for ax in (ax_img, ax_txt):
            ax.axis("off")
        if k >= n:
            continue
        img = images[k]
        if isinstance(img, (bytes, bytearray)):
            img = Image.open(io.BytesIO(img))
        ax_img.imshow(img.convert("RGB"))
        top = predictions[k]
        truth = truths[k] if truths else None
        ok = truth is None or top[0]["label"] == truth
        if truth is not None:
            ax_img.set_title(f"true: {truth[:14]}", fontsize=10, color="#2ca02c" if ok else "#d62728")
        text = "\n".join(f"{t['label'][:10]} {t['probability']:.0%}" for t in top[:3])
        ax_txt.text(0, 0.5, text, fontsize=10, va="center", family="monospace")
    fig.suptitle(title)
    return fig


@for_the_book
def load_test(results: dict) -> Figure:
    """Throughput and p50/p95 latency by concurrency, one line per path (e.g. direct vs through the function URL)."""
    fig = Figure(figsize=(10, 3.4), layout="tight")
    ax1, ax2 = fig.subplots(1, 2)
    for label, rows in results.items():
        c = [r["concurrency"] for r in rows]
        ax1.plot(c, [r["req_per_s"] for r in rows], marker="o", label=label)
        ax2.plot(c, [r["p50_ms"] for r in rows], marker="o", label=f"{label} p50")
        ax2.plot(c, [r["p95_ms"] for r in rows], marker="x", ls="--", label=f"{label} p95")
    ax1.set_xlabel("concurrent clients")
    ax1.set_ylim(0, None)  # from zero: a narrow axis turns noise into trends
    ax2.set_ylim(0, None)
    ax1.set_ylabel("requests / s")
    ax1.set_title("Throughput of one instance")
    ax2.set_xlabel("concurrent clients")
    ax2.set_ylabel("latency (ms)")
    ax2.set_title("Latency")
    for ax in (ax1, ax2):
        ax.legend(frameon=False, fontsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    return fig


@for_the_book
def simulation(results: list, title: str) -> Figure:
    """SIMULATION: traffic, instances, invocations per instance and estimated latency over time by policy."""
    fig = Figure(figsize=(10, 7.5), layout="tight")
    axes = fig.subplots(4, 1, sharex=True)
    axes[0].plot(results[0].minutes, results[0].traffic, color="k")
    axes[0].set_ylabel("invocations\n/ minute")
    for r in results:
        axes[1].step(r.minutes, r.instances, where="post", label=f"{r.policy.name}: billed")
        color = axes[1].lines[-1].get_color()
        if getattr(r, "serving", None) and r.serving != r.instances:
            axes[1].step(r.minutes, r.serving, where="post", ls="--", color=color, label=f"{r.policy.name}: serving")
        axes[2].plot(r.minutes, r.per_instance, label=r.policy.name, color=color)
        axes[3].plot(r.minutes, r.latency_ms, label=r.policy.name, color=color)
        axes[2].axhline(r.policy.target_invocations_per_instance, ls=":", lw=0.8, color=color)
    objective = getattr(results[0], "objective_ms", float("inf"))
    if objective != float("inf"):
        axes[3].axhline(objective, ls=":", color="k", lw=1)
        axes[3].annotate("latency objective", (results[0].minutes[0], objective), xytext=(2, 2),
                         textcoords="offset points", fontsize=10)
    axes[1].set_ylabel("instances")
    axes[2].set_ylabel("invocations /\ninstance / min")
    axes[3].set_ylabel("est. latency\n(ms)")
    axes[3].set_yscale("log")
    axes[3].set_xlabel("minute")
    axes[1].legend(frameon=False, fontsize=10, ncol=2)
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"SIMULATION (not a measurement): {title}")
    return fig


@for_the_book
def replica_scaling(timeline) -> Figure:
    """A stepped load against a Ray Serve endpoint: clients and replicas, throughput, and latency over time."""
    fig = Figure(figsize=(10, 6.4), layout="tight")
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
    t = timeline.index
    ax1.step(t, timeline["clients"], where="post", color="#7f7f7f", label="concurrent clients")
    ax1.set_ylabel("clients")
    ax1b = ax1.twinx()
    ax1b.step(t, timeline["replicas"], where="post", color="#d62728", lw=2, label="replicas that answered")
    ax1b.set_ylabel("replicas")
    ax1b.set_ylim(0, max(2, int(timeline["replicas"].max())) + 0.5)
    ax1b.yaxis.get_major_locator().set_params(integer=True)
    ax1.set_title("Ray Serve replicas under a stepped load (measured, not simulated)")
    handles = ax1.get_legend_handles_labels()[0] + ax1b.get_legend_handles_labels()[0]
    ax1.legend(handles, [h.get_label() for h in handles], frameon=False, fontsize=8, loc="upper left")
    ax2.plot(t, timeline["req_per_s"], marker=".", color="#1f77b4")
    ax2.set_ylabel("requests / s")
    ax2.set_ylim(0, None)
    ax3.plot(t, timeline["p50_ms"], marker=".", label="p50")
    ax3.plot(t, timeline["p99_ms"], marker=".", ls="--", label="p99")
    ax3.set_ylabel("latency (ms)")
    ax3.set_ylim(0, None)
    ax3.set_xlabel("seconds since the load started")
    ax3.legend(frameon=False, fontsize=8)
    for ax in (ax1, ax2, ax3):
        ax.spines[["top"]].set_visible(False)
    return fig


# The performance appendix: the committed reference runs (helpers.bench.runs_table) and this build's chapters

@for_the_book
def reference_training(train) -> Figure:
    """Training images per second, every reference run's variants, the seed-style loop in grey (log scale)."""
    fig = Figure(figsize=(8, 0.6 + 0.45 * len(train)), layout="tight")
    ax = fig.subplots()
    labels = [f"{r.run}: {r.variant.split(' (')[0]}" for r in train.itertuples()]
    ax.barh(labels, train["images_per_s"], color=["#7f7f7f" if v.startswith("seed") else "#1f77b4"
                                                  for v in train["variant"]])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("training images / s (log scale)")
    return fig


@for_the_book
def reference_serving(rows, title: str) -> Figure:
    """One reference run's serving rows: throughput and p99 against clients for both containers (Ray Serve at its
    first batching setting), and every batching setting's p99 against throughput at the highest load."""
    from helpers.bench import FLOOR, RAY, TORCHSERVE

    plain = rows[rows["abuse"].isna()] if "abuse" in rows else rows
    ray = plain[plain["setup"] == RAY]
    first = ray["batching"].iloc[0] if len(ray) else None
    fig = Figure(figsize=(10, 3.8), layout="tight")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for setup, group in plain[plain["setup"].isin((TORCHSERVE, RAY))].groupby("setup", sort=False):
        is_ray = setup == RAY
        group = group[group["batching"] == first] if is_ray else group
        label = setup.split(" (")[0] + (f" ({first})" if is_ray else "")
        ax1.plot(group["concurrency"], group["req_per_s"], marker="o", label=label)
        ax2.plot(group["concurrency"], group["p99_ms"], marker="o", label=label)
    floor = plain[plain["setup"] == FLOOR]
    if len(floor):
        ax1.axhline(floor["req_per_s"].iloc[0], color="#7f7f7f", ls=":", label="in-process handler, 1 client")
    ax1.set(xlabel="concurrent clients", ylabel="requests / s", title="Throughput", ylim=(0, None))
    ax2.set(xlabel="concurrent clients", ylabel="p99 latency (ms)", title="Tail latency", ylim=(0, None))
    sweep = ray[ray["concurrency"] == ray["concurrency"].max()]
    ax3.scatter(sweep["p99_ms"], sweep["req_per_s"], color="#d62728")
    for r in sweep.itertuples():
        ax3.annotate(r.batching, (r.p99_ms, r.req_per_s), xytext=(4, 4), textcoords="offset points")
    ax3.set(xlabel="p99 latency (ms)", ylabel="requests / s", ylim=(0, None), xlim=(0, None),
            title=f"Ray Serve settings, {int(sweep['concurrency'].max()) if len(sweep) else 0} clients")
    for ax in (ax1, ax2):
        ax.legend(frameon=False)
    fig.suptitle(title)
    return fig


@for_the_book
def chapter_times(each) -> Figure:
    """The wall time of each chapter of this build."""
    fig = Figure(figsize=(7, 0.6 + 0.4 * len(each)), layout="tight")
    ax = fig.subplots()
    ax.barh(each["chapter"], each["seconds"], color="#1f77b4")
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    return fig
