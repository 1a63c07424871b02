"""Does the pretrained start help? Chapter 2's measured comparison of starts: random against ImageNet weights,
a frozen backbone against fine-tuning its last stage or all its layers, and the ``mlp`` head and augmentation
that the published dog-breed solutions use, as switches.

Each start is an ordinary training job with a few hyperparameters changed; this module names the starts,
reads each finished job into a row, and says what the rows show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from helpers.runtime import metrics

#: What every start shares, so the rows differ only in what their names say (a short run: it is a comparison).
SHARED: dict[str, Any] = {"epochs": 2, "batch_size": 16, "patience": 1, "max_per_class": 64}


@dataclass(frozen=True)
class Start:
    """One row of the comparison: a short label and the hyperparameters that make it."""

    label: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @property
    def pretrained(self) -> bool:
        return self.hyperparameters.get("weights") != "none"


#: The starts, cheapest first. Fine-tuning uses a smaller learning rate, as fine-tuning recipes do: the
#: pretrained layers should move less than a new head.
STARTS: tuple[Start, ...] = (
    Start("random, frozen", {"weights": "none", "freeze_backbone": True, "lr": 1e-3}),
    Start("pretrained, frozen", {"freeze_backbone": True, "lr": 1e-3}),
    Start("pretrained, frozen, mlp head", {"freeze_backbone": True, "head": "mlp", "lr": 1e-3}),
    Start("pretrained, frozen, augmented", {"freeze_backbone": True, "augment": True, "lr": 1e-3}),
    Start("pretrained, last stage tuned", {"freeze_backbone": False, "finetune": "last", "lr": 3e-4}),
    Start("pretrained, all layers tuned", {"freeze_backbone": False, "finetune": "all", "lr": 3e-4}),
)


def hyperparameters(static: Mapping[str, Any], start: Start) -> dict[str, Any]:
    """A start's job: the run's shared settings, :data:`SHARED`, then the start's own changes."""
    return {**static, **SHARED, **start.hyperparameters}


def schedule(train_dir: Path, shared: Mapping[str, Any] = SHARED) -> str:
    """What every start shares, said from :data:`SHARED` and the train split's own class folders (the page's
    prose cannot drift from the jobs). The split is listed as the entry point lists it."""
    from helpers.runtime.layout import class_folders, list_samples

    classes = class_folders(Path(train_dir))
    per_class = [0] * len(classes)
    for _, label in list_samples(Path(train_dir), classes):
        per_class[label] += 1
    limit, total = int(shared.get("max_per_class", 0)), sum(per_class)
    epochs = int(shared["epochs"])
    line = f"Every start trains for {epochs} epoch{'s' if epochs != 1 else ''} in batches of {shared['batch_size']}"
    if limit > 0:
        kept = sum(min(n, limit) for n in per_class)
        line += (f", on a seeded sample of at most {limit} training images per class (`max_per_class`): "
                 f"{kept:,} of the {total:,} training images of {len(classes)} classes")
    else:
        line += f", on all {total:,} training images"
    return line + "; validation uses the whole split."


def job_row(start: Start, description: Mapping[str, Any]) -> dict[str, Any]:
    """One table row from a finished job's ``DescribeTrainingJob``: the validation accuracy of its last epoch
    (``FinalMetricDataList`` keeps each metric's last value), the epochs it ran and its training seconds."""
    final = {m["MetricName"]: m["Value"] for m in description.get("FinalMetricDataList", [])}
    return {"start": start.label, "status": description.get("TrainingJobStatus", "?"),
            "valid accuracy": final.get(metrics.OBJECTIVE_METRIC, math.nan),
            "epochs": int(final.get("epoch", 0)) or None,
            "seconds": description.get("TrainingTimeInSeconds", math.nan)}


def table(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The comparison as a DataFrame indexed by start."""
    import pandas as pd

    return pd.DataFrame(list(rows)).set_index("start")


#: A fine-tuning gain (accuracy) large enough to be about the data, not the noise of a short run.
FINE_TUNING_MATTERS = 0.02
#: Accuracy differences below this (half a point) are said as "the same", not as an order.
SAME = 0.005


def points(difference: float) -> str:
    """An accuracy difference in percentage points: ``0.111`` reads ``11.1 points``."""
    return f"{difference * 100:.1f} points"


def insights(rows: Sequence[Mapping[str, Any]], dataset: str, weights: str) -> list[str]:
    """What the comparison shows, computed from its rows."""
    by = {r["start"]: r for r in rows}
    acc = {k: r["valid accuracy"] for k, r in by.items() if not math.isnan(r["valid accuracy"])}
    lines: list[str] = []
    random_, frozen = acc.get(STARTS[0].label), acc.get(STARTS[1].label)
    if weights == "none":
        lines.append("This run has no pretrained weights (weights none), so every start begins from random "
                     "weights: the comparison cannot show what ImageNet features are worth here.")
    elif random_ is not None and frozen is not None:
        gain = frozen - random_
        if gain >= 0.05:
            lines.append(f"ImageNet features are worth {points(gain)} of validation accuracy here: a frozen "
                         f"pretrained backbone scores {frozen:.1%}, the same backbone with random weights "
                         f"{random_:.1%}.")
        else:
            verdict = (f"ImageNet features do worse than random ones on `{dataset}`, by {points(-gain)}"
                       if gain < -SAME else f"ImageNet features help little on `{dataset}`")
            lines.append(
                f"{verdict}: {frozen:.1%} frozen and pretrained against "
                f"{random_:.1%} frozen and random. The features were learnt on photos of objects; "
                + ("8x8 grey scans of digits, upscaled, look nothing like them (the domain gap), and even random "
                   "convolutions give a linear classifier enough to separate ten digits."
                   if dataset == "digits" else "the further a dataset is from such photos (the domain gap), "
                   "the less they carry over."))
    for s in STARTS[4:]:
        if frozen is None or s.label not in acc:
            continue
        change = acc[s.label] - frozen
        verb = "gains" if change > SAME else "loses" if change < -SAME else "changes"
        lines.append(f"Fine-tuning ({s.label.removeprefix('pretrained, ')}) {verb} {points(abs(change))} over the "
                     f"frozen backbone ({acc[s.label]:.1%} against {frozen:.1%}) and takes "
                     f"{by[s.label]['seconds']:.0f} s against {by[STARTS[1].label]['seconds']:.0f} s.")
    tuned = [acc[s.label] for s in STARTS[4:] if s.label in acc]
    if frozen is not None and tuned:
        lines.append("A frozen backbone's features are computed once and cached, so its epochs train the head "
                     "alone; a tuned backbone runs forward and backward through every image, every epoch.")
        if weights != "none" and max(tuned) - frozen >= FINE_TUNING_MATTERS:
            lines.append(
                f"That fine-tuning adds {points(max(tuned) - frozen)} says ImageNet's features are not quite the ones "
                "these images need, the domain gap: "
                + ("8x8 grey scans of handwritten digits, upscaled, look nothing like ImageNet's photos of objects, "
                   "so adapting the layers pays. On dog photos, ImageNet's own domain, a frozen backbone gets most "
                   "of the way." if dataset == "digits" else
                   "the further a dataset is from ImageNet's photos, the more adapting the layers pays."))
    for s in STARTS[2:4]:
        if s.label in acc and frozen is not None:
            d = acc[s.label] - frozen
            what = "the same" if abs(d) < SAME else f"{points(abs(d))} {'better' if d > 0 else 'worse'}"
            lines.append(f"The switch `{s.label.removeprefix('pretrained, frozen, ')}` scores {what} than the "
                         f"plain frozen start ({acc[s.label]:.1%}).")
    return lines
