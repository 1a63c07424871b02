"""The seven Debugger built-in rules as module-level ``smdebug.rules.Rule`` subclasses.

This module imports smdebug at import time; :mod:`helpers.debugger_rules` imports it only when a rule is
evaluated (:func:`helpers.debugger_rules.rule_class`), so the chapters and the catalogue need no smdebug.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from smdebug.core.modes import ModeKeys as modes
from smdebug.rules.rule import Rule

from helpers.debugger_rules import (NUM, RuleConfigError, TrialError, _check, _loss_tensor, loss_phases,
                                    tensor_names, tensor_stat)



class VanishingGradient(Rule):
    """Fires when the mean of the absolute values of a gradient falls below ``threshold``."""

    def __init__(self, base_trial: Any, threshold: float = 0.0000001) -> None:
        super().__init__(base_trial, action_str="")
        self.threshold = _check("threshold", threshold, NUM, positive=True)
        self.grads = base_trial.tensor_names(collection="gradients")

    def invoke_at_step(self, step: int) -> bool:
        for name in self.grads:
            v = tensor_stat(self.base_trial, name, step, modes.GLOBAL, "abs_mean")
            if v is not None and v < self.threshold:
                self.last_reason = f"{name}: mean |gradient| {v:.3g} < {self.threshold:g}"
                return True
        return False


class ExplodingTensor(Rule):
    """Fires when a tensor holds NaN (or, unless ``only_nan``, infinite) values."""

    def __init__(self, base_trial: Any, collection_names: str | None = None, tensor_regex: str | None = None,
                 only_nan: bool = False) -> None:
        super().__init__(base_trial, action_str="")
        self.only_nan = _check("only_nan", only_nan, bool)
        names: set[str] = set()
        if collection_names:
            for c in _check("collection_names", collection_names, str).split(","):
                names.update(base_trial.tensor_names(collection=c.strip()))
        if tensor_regex:
            names.update(tensor_names(base_trial, _check("tensor_regex", tensor_regex, str)))
        self.names = sorted(names) if (collection_names or tensor_regex) else base_trial.tensor_names()

    def invoke_at_step(self, step: int) -> bool:
        for name in self.names:
            try:
                v = np.asarray(self.base_trial.tensor(name).value(step, mode=modes.GLOBAL), dtype=np.float64)
                bad = np.isnan(v).any() if self.only_nan else not np.isfinite(v).all()
            except Exception:  # noqa: BLE001 - reductions only, or not saved at this step
                n = tensor_stat(self.base_trial, name, step, modes.GLOBAL, "nonfinite")
                bad = bool(n)
            if bad:
                self.last_reason = f"{name} holds {'NaN' if self.only_nan else 'NaN or infinite'} values"
                return True
        return False


class Overfit(Rule):
    """Fires when (mean validation loss - mean training loss) / mean training loss exceeds
    ``ratio_threshold`` for ``patience`` consecutive evaluations (each EVAL phase against the
    TRAIN phase before it), from ``start_step`` on."""

    def __init__(self, base_trial: Any, tensor_regex: str | None = None, start_step: int = 0, patience: int = 1,
                 ratio_threshold: float = 0.1) -> None:
        super().__init__(base_trial, action_str="")
        self.start_step = _check("start_step", start_step, int)
        self.patience = _check("patience", patience, int, positive=True)
        self.ratio_threshold = _check("ratio_threshold", ratio_threshold, NUM, positive=True)
        phases = loss_phases(base_trial, _loss_tensor(base_trial, tensor_regex))
        self.checks: dict[int, float] = {}
        for prev, ph in zip(phases, phases[1:]):
            if ph["mode"] == modes.EVAL and prev["mode"] == modes.TRAIN and prev["mean"] > 0:
                self.checks[ph["end"]] = (ph["mean"] - prev["mean"]) / prev["mean"]
        self.over = 0

    def invoke_at_step(self, step: int) -> bool:
        if step < self.start_step or step not in self.checks:
            return False
        self.over = self.over + 1 if self.checks[step] > self.ratio_threshold else 0
        self.last_reason = (f"mean validation loss {self.checks[step]:+.0%} vs the training loss before it "
                            f"(threshold {self.ratio_threshold:+.0%}, {self.over} time(s) in a row)")
        return self.over >= self.patience


class Overtraining(Rule):
    """Fires when the training loss (phase means) has not improved by ``delta`` for ``patience_train``
    phases, or the validation loss not for ``patience_validation`` phases: the model has stopped
    improving and further training only risks overfitting."""

    def __init__(self, base_trial: Any, patience_train: int = 5, patience_validation: int = 10,
                 delta: float = 0.01) -> None:
        super().__init__(base_trial, action_str="")
        self.patience = {modes.TRAIN: _check("patience_train", patience_train, int, positive=True),
                         modes.EVAL: _check("patience_validation", patience_validation, int, positive=True)}
        self.delta = _check("delta", delta, NUM)
        self.phases = {ph["end"]: ph for ph in loss_phases(base_trial, _loss_tensor(base_trial, None))}
        self.best = {modes.TRAIN: math.inf, modes.EVAL: math.inf}
        self.stale = {modes.TRAIN: 0, modes.EVAL: 0}

    def invoke_at_step(self, step: int) -> bool:
        ph = self.phases.get(step)
        if ph is None:
            return False
        m = ph["mode"]
        if ph["mean"] < self.best[m] - self.delta:
            self.best[m], self.stale[m] = ph["mean"], 0
        else:
            self.stale[m] += 1
        which = "training" if m == modes.TRAIN else "validation"
        self.last_reason = (f"{which} loss did not improve by {self.delta} for {self.stale[m]} epoch(s) "
                            f"(best {self.best[m]:.4f})")
        return self.stale[m] >= self.patience[m]


class PoorWeightInitialization(Rule):
    """Looks at the first ``steps`` saved training steps and fires when the variance of the activation
    inputs differs between layers by more than ``threshold`` times, when the 5th-95th percentile
    spread of a gradient is below ``distribution_range`` (raw gradients only), or when the mean loss
    of the ``patience`` saved steps after the first ``patience`` is not below theirs."""

    def __init__(self, base_trial: Any, activation_inputs_regex: str = ".*relu_input", threshold: float = 10.0,
                 distribution_range: float = 0.001, patience: int = 5, steps: int = 10) -> None:
        super().__init__(base_trial, action_str="")
        self.threshold = _check("threshold", threshold, NUM, positive=True)
        self.distribution_range = _check("distribution_range", distribution_range, NUM)
        self.patience = _check("patience", patience, int, positive=True)
        self.steps = _check("steps", steps, int, positive=True)
        self.acts = tensor_names(base_trial, _check("activation_inputs_regex", activation_inputs_regex, str))
        self.grads = base_trial.tensor_names(collection="gradients")
        try:
            self.loss = _loss_tensor(base_trial, None)
        except TrialError:
            self.loss = None
        self.train_steps = base_trial.steps(mode=modes.TRAIN)[: self.steps]
        self.losses: list[float] = []
        self.last_reason = ""

    def invoke_at_step(self, step: int) -> bool:
        if step not in {self.base_trial.global_step(modes.TRAIN, s) for s in self.train_steps}:
            return False
        mstep = self.base_trial.mode_modestep(step)[1]
        variances = [v for n in self.acts
                     if (v := tensor_stat(self.base_trial, n, mstep, modes.TRAIN, "variance")) is not None]
        if len(variances) >= 2:
            lo, hi = min(variances), max(variances)
            if lo <= 0 or hi / lo > self.threshold:
                self.last_reason = f"activation variance ratio {hi / max(lo, 1e-30):.3g} > {self.threshold:g}"
                return True
        for n in self.grads:
            spread = tensor_stat(self.base_trial, n, mstep, modes.TRAIN, "p95-p5")
            if spread is not None and spread < self.distribution_range:
                self.last_reason = f"{n}: gradient p95-p5 {spread:.3g} < {self.distribution_range:g}"
                return True
        if self.loss is not None:
            try:
                self.losses.append(float(np.asarray(self.base_trial.tensor(self.loss).value(mstep, mode=modes.TRAIN))))
            except Exception:  # noqa: BLE001 - loss not saved at this step
                return False
            if len(self.losses) == 2 * self.patience:
                first = float(np.mean(self.losses[: self.patience]))
                second = float(np.mean(self.losses[self.patience:]))
                if second >= first:
                    self.last_reason = (f"loss did not decrease over the first steps: mean {second:.4g} after "
                                        f"{first:.4g} (first {self.patience} saved steps vs the next {self.patience})")
                    return True
        return False


class LossNotDecreasing(Rule):
    """Every ``num_steps`` saved loss values, compares the mean of the latest ``num_steps`` values with
    the mean of the ``num_steps`` before; fires when it did not fall by ``diff_percent`` percent (or
    rose by more than ``increase_threshold_percent``). ``mode`` None checks EVAL, then TRAIN, then
    GLOBAL, whichever saved the loss."""

    def __init__(self, base_trial: Any, collection_names: str | None = None, tensor_regex: str | None = None,
                 use_losses_collection: bool = True, num_steps: int = 10, diff_percent: float = 0.1,
                 increase_threshold_percent: float = 5, mode: str | None = None) -> None:
        super().__init__(base_trial, action_str="")
        self.num_steps = _check("num_steps", num_steps, int, positive=True)
        self.diff_percent = _check("diff_percent", diff_percent, NUM)
        self.increase = _check("increase_threshold_percent", increase_threshold_percent, NUM)
        _check("use_losses_collection", use_losses_collection, bool)
        if mode is not None and _check("mode", mode, str).upper() not in ("TRAIN", "EVAL", "GLOBAL"):
            raise RuleConfigError(f"rule parameter mode must be TRAIN, EVAL or GLOBAL, got {mode!r}")
        names: list[str] = []
        if collection_names:
            for c in _check("collection_names", collection_names, str).split(","):
                names += base_trial.tensor_names(collection=c.strip())
        if tensor_regex:
            names += tensor_names(base_trial, _check("tensor_regex", tensor_regex, str))
        if use_losses_collection and not names:
            names = base_trial.tensor_names(collection="losses")
        if not names:
            raise TrialError("the trial saved no loss tensor (is the loss registered with the hook?)")
        self.name = names[0]
        order = [getattr(modes, mode.upper())] if mode else [modes.EVAL, modes.TRAIN, modes.GLOBAL]
        self.mode, self.values = None, []
        for m in order:
            steps = base_trial.tensor(self.name).steps(mode=m)
            if len(steps) >= 2 * self.num_steps:
                self.mode = m
                self.values = [(base_trial.global_step(m, s),
                                float(np.asarray(base_trial.tensor(self.name).value(s, mode=m)))) for s in steps]
                break
        self.checkpoints = {g: i for i, (g, _) in enumerate(self.values)
                            if i + 1 >= 2 * self.num_steps and (i + 1) % self.num_steps == 0}

    def invoke_at_step(self, step: int) -> bool:
        i = self.checkpoints.get(step)
        if i is None:
            return False
        window = [v for _, v in self.values]
        new = float(np.mean(window[i + 1 - self.num_steps: i + 1]))
        old = float(np.mean(window[i + 1 - 2 * self.num_steps: i + 1 - self.num_steps]))
        if old == 0:
            return False
        change = (old - new) / abs(old) * 100  # positive: the loss fell
        self.last_reason = (f"{self.mode.name} loss: mean of the last {self.num_steps} saved values {new:.4g} vs "
                            f"{old:.4g} before ({-change:+.1f}%)")
        return change < self.diff_percent or -change > self.increase


class ClassImbalance(Rule):
    """Once ``samples`` training labels were seen, fires when the largest class has more than
    ``threshold_imbalance`` times the samples of the smallest; at the last step, fires when some
    class is mispredicted in more than ``threshold_misprediction`` of its latest ``samples`` labels."""

    def __init__(self, base_trial: Any, threshold_imbalance: float = 10, threshold_misprediction: float = 0.7,
                 samples: int = 500, argmax: bool = False, labels_regex: str = ".*labels",
                 predictions_regex: str = ".*predictions") -> None:
        super().__init__(base_trial, action_str="")
        self.threshold_imbalance = _check("threshold_imbalance", threshold_imbalance, NUM, positive=True)
        self.threshold_misprediction = _check("threshold_misprediction", threshold_misprediction, NUM)
        self.samples = _check("samples", samples, int, positive=True)
        self.argmax = _check("argmax", argmax, bool)
        labels = tensor_names(base_trial, _check("labels_regex", labels_regex, str))
        preds = tensor_names(base_trial, _check("predictions_regex", predictions_regex, str))
        if not labels or not preds:
            raise TrialError("class_imbalance needs tensors matching .*labels and .*predictions")
        self.labels, self.preds = labels[0], preds[0]
        self.seen_labels: list[np.ndarray] = []
        self.seen_preds: list[np.ndarray] = []
        steps = base_trial.tensor(self.labels).steps(mode=modes.TRAIN)
        self.train_steps = {base_trial.global_step(modes.TRAIN, s): s for s in steps}
        self.last = max(self.train_steps) if self.train_steps else -1
        self.last_reason = ""

    def invoke_at_step(self, step: int) -> bool:
        s = self.train_steps.get(step)
        if s is None:
            return False
        y = np.asarray(self.base_trial.tensor(self.labels).value(s, mode=modes.TRAIN)).astype(int).ravel()
        p = np.asarray(self.base_trial.tensor(self.preds).value(s, mode=modes.TRAIN))
        p = (p.argmax(axis=-1) if self.argmax else p).astype(int).ravel()
        self.seen_labels.append(y)
        self.seen_preds.append(p)
        labels = np.concatenate(self.seen_labels)
        if len(labels) < self.samples:
            return False
        counts = np.bincount(labels)
        counts = counts[counts > 0]
        if len(counts) and counts.max() / counts.min() > self.threshold_imbalance:
            self.last_reason = f"class counts range from {counts.min()} to {counts.max()}"
            return True
        if step == self.last:
            y_all, p_all = labels[-self.samples:], np.concatenate(self.seen_preds)[-self.samples:]
            for c in np.unique(y_all):
                miss = float(np.mean(p_all[y_all == c] != c))
                if miss > self.threshold_misprediction:
                    self.last_reason = f"class {c} mispredicted in {miss:.0%} of its latest samples"
                    return True
        return False


#: By class name, as :class:`helpers.debugger_rules.RuleInfo` names them.
RULE_CLASSES: dict[str, type] = {cls.__name__: cls for cls in (
    VanishingGradient, ExplodingTensor, Overfit, Overtraining, PoorWeightInitialization, LossNotDecreasing,
    ClassImbalance)}
