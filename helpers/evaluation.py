"""Test-set evaluation of a trained model: predictions, confusion matrix, per-class accuracy, confused pairs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helpers.runtime.layout import display_name


@dataclass
class Predictions:
    y_true: np.ndarray
    y_pred: np.ndarray
    probabilities: np.ndarray
    class_folders: list[str]
    files: list[str]

    @property
    def names(self) -> list[str]:
        return [display_name(c) for c in self.class_folders]

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.y_true == self.y_pred)) if len(self.y_true) else float("nan")


def predict_split(model_dir: str | Path, split_dir: str | Path, batch_size: int = 64) -> Predictions:
    """Run a saved model over every image of a split (labels from the model's own class list)."""
    import torch  # here: the statistics below need no torch (chapter 4 imports this module for them)

    from helpers.runtime.models import load_model
    from helpers.runtime.presets import Preprocessing, eval_transform
    from helpers.runtime.train import ImageSamples, collate_skip, list_samples

    model, cfg = load_model(model_dir)
    transform = eval_transform(Preprocessing.from_dict(cfg.preprocessing))
    samples = list_samples(Path(split_dir), cfg.class_names)
    loader = torch.utils.data.DataLoader(ImageSamples(samples, transform), batch_size=batch_size,
                                         collate_fn=collate_skip)
    ys, ps = [], []
    with torch.no_grad():
        for batch in loader:
            if batch is None:
                continue
            x, y = batch
            ps.append(torch.softmax(model(x), dim=1))
            ys.append(y)
    probs = torch.cat(ps).numpy()
    return Predictions(torch.cat(ys).numpy(), probs.argmax(1), probs, list(cfg.class_names), [s for s, _ in samples])


def confusion(pred: Predictions) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    k = len(pred.class_folders)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (pred.y_true, pred.y_pred), 1)
    return cm


def per_class_table(pred: Predictions):
    """Images, correct predictions and accuracy per class, worst first."""
    import pandas as pd

    cm = confusion(pred)
    n = cm.sum(1)
    df = pd.DataFrame({"class": pred.names, "images": n, "correct": np.diag(cm),
                       "accuracy": np.where(n > 0, np.diag(cm) / np.maximum(n, 1), np.nan)})
    return df.sort_values(["accuracy", "class"]).reset_index(drop=True)


def confused_pairs(pred: Predictions, top: int = 5) -> list[tuple[str, str, int]]:
    """The most frequent (true, predicted) mistakes."""
    cm = confusion(pred)
    np.fill_diagonal(cm, 0)
    order = np.dstack(np.unravel_index(np.argsort(-cm, axis=None), cm.shape))[0]
    return [(pred.names[i], pred.names[j], int(cm[i, j])) for i, j in order[:top] if cm[i, j] > 0]


def insights(pred: Predictions) -> list[str]:
    """Plain-language findings computed from the test predictions."""
    table = per_class_table(pred)
    out = [f"Test accuracy {pred.accuracy:.1%} on {len(pred.y_true)} images the model never saw while training "
           "or tuning."]
    worst, best = table.iloc[0], table.iloc[-1]
    if len(table) > 1:
        out.append(f"Per-class accuracy ranges from {worst['accuracy']:.0%} (class “{worst['class']}”) to "
                   f"{best['accuracy']:.0%} (class “{best['class']}”).")
    pairs = confused_pairs(pred, 3)
    if pairs:
        out.append("Most confused: " + "; ".join(f"“{t}” taken for “{p}” {_times(n)}" for t, p, n in pairs) + ".")
    else:
        out.append("No test image was misclassified.")
    return out


def history_insights(history: list[dict]) -> list[str]:
    """What the per-epoch history says: best epoch, rising validation loss, the train/valid gap."""
    if not history:
        return []
    best = min(history, key=lambda h: h["valid_loss"])
    out = [f"The lowest validation loss ({best['valid_loss']:.4f}) came at epoch {best['epoch']} of "
           f"{history[-1]['epoch']}; that epoch's weights are the model that is kept."]
    after = [h for h in history if h["epoch"] > best["epoch"]]
    if after:
        out.append(f"Validation loss rose after epoch {best['epoch']} (to {after[-1]['valid_loss']:.4f} at epoch "
                   f"{after[-1]['epoch']}): more epochs would not have helped.")
    last = history[-1]
    gap = last["train_accuracy"] - last["valid_accuracy"]
    if gap > 0.1:
        out.append(f"Training accuracy is {gap:.0%} above validation accuracy at the end: the model overfits.")
    elif gap < -0.05:
        out.append("Validation accuracy is above training accuracy: training accuracy is measured while the "
                   "weights still change (and with dropout), validation after the epoch.")
    return out


def _times(n: int) -> str:
    return "once" if n == 1 else "twice" if n == 2 else f"{n} times"


def wilson_interval(right: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% (Wilson score) interval of an accuracy measured as ``right`` of ``n``."""
    if n <= 0:
        return 0.0, 1.0
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def sample_insight(right: int, n: int, split_accuracy: float, split_size: int | None = None) -> str:
    """Whether ``right`` of ``n`` requests agree with the accuracy of the whole test split, given sampling noise."""
    lo, hi = wilson_interval(right, n)
    said = (f"The endpoint's top-1 label was right for {right} of {n} requests ({right / max(1, n):.0%}; 95% interval "
            f"{lo:.0%}-{hi:.0%}), against {split_accuracy:.0%} on the whole test split"
            + (f" of {split_size:,} images" if split_size else ""))
    if lo <= split_accuracy <= hi:
        return (said + f": {n} requests are a small sample of that split, and the difference is within its "
                "sampling noise, not a sign that serving predicts differently from training.")
    return (said + ": the split's accuracy lies outside the sample's interval, so serving may not predict as the "
            "evaluation did: compare the preprocessing of the two paths.")
