"""The seven SageMaker Debugger built-in rules, evaluated locally on an smdebug trial.

SageMaker Debugger is closed to new customers since 2026-07-30, and the built-in rules only ever ran
inside AWS's rule container. These are ``smdebug.rules.Rule`` subclasses with the documented names,
parameters and default values, so the same analysis runs on a local job's ``output/tensors`` or on
the tensors a SageMaker job uploaded with its output. Where the documentation leaves the exact
computation open, the docstring of each rule says what is computed here.

Loss-based rules work on *phase means*: the mean loss of each run of consecutive TRAIN (or EVAL)
steps, i.e. one value per epoch and mode. Per-batch losses are too noisy to compare one by one.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from helpers.runtime.debugger import quiet_smdebug

log = logging.getLogger(__name__)

LOSS_REGEX = r"[Ll]oss_(?!input).*output"


class RuleConfigError(ValueError):
    """A rule parameter has the wrong type or value."""


class TrialError(ValueError):
    """The trial folder holds no usable steps."""


def _rule_base():
    from smdebug.rules.rule import Rule

    return Rule


def _modes():
    from smdebug.core.modes import ModeKeys

    return ModeKeys


def _check(name: str, value: Any, kind: type | tuple[type, ...], positive: bool = False) -> Any:
    if isinstance(value, bool) and kind is not bool:
        raise RuleConfigError(f"rule parameter {name} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise RuleConfigError(f"rule parameter {name} must be {getattr(kind, '__name__', kind)}, "
                              f"got {type(value).__name__} {value!r}")
    if positive and value <= 0:
        raise RuleConfigError(f"rule parameter {name} must be > 0, got {value!r}")
    return value


NUM = (int, float)


# --------------------------------------------------------------------------------------------------
# Reading a trial


def tensor_stat(trial: Any, name: str, step: int, mode: Any, stat: str) -> float | None:
    """A statistic of a tensor at a (mode) step, from the raw tensor or from the saved reductions."""
    t = trial.tensor(name)
    try:
        v = np.asarray(t.value(step, mode=mode), dtype=np.float64)
        if stat == "abs_mean":
            return float(np.mean(np.abs(v)))
        if stat == "nonfinite":
            return float(np.size(v) - np.count_nonzero(np.isfinite(v)))
        if stat == "p95-p5":
            return float(np.percentile(v, 95) - np.percentile(v, 5))
        return float(getattr(np, stat)(v))
    except Exception:  # noqa: BLE001 - no raw tensor: fall back to the reductions smdebug saved
        pass
    try:
        if stat == "abs_mean":
            return float(t.reduction_value(step, "mean", mode=mode, abs=True))
        if stat == "nonfinite":
            vals = [t.reduction_value(step, r, mode=mode) for r in ("mean", "variance", "min", "max")]
            return float(sum(not math.isfinite(float(v)) for v in vals))
        if stat in ("mean", "variance", "min", "max"):
            return float(t.reduction_value(step, stat, mode=mode))
    except Exception:  # noqa: BLE001 - not saved at this step
        return None
    return None


def loss_phases(trial: Any, tensor: str) -> list[dict[str, Any]]:
    """Mean loss per phase: runs of consecutive global steps in one mode (one per epoch and mode)."""
    modes = _modes()
    points = []
    for mode in (modes.TRAIN, modes.EVAL):
        try:
            steps = trial.tensor(tensor).steps(mode=mode)
        except Exception:  # noqa: BLE001 - the loss was not saved in this mode
            continue
        for s in steps:
            g = trial.global_step(mode, s)
            points.append((g, mode, float(np.asarray(trial.tensor(tensor).value(s, mode=mode)))))
    points.sort(key=lambda p: p[0])
    phases: list[dict[str, Any]] = []
    for g, mode, v in points:
        if phases and phases[-1]["mode"] == mode:
            ph = phases[-1]
            ph["values"].append(v)
            ph["end"] = g
        else:
            phases.append({"mode": mode, "start": g, "end": g, "values": [v]})
    for ph in phases:
        ph["mean"] = float(np.mean(ph["values"]))
    return phases


def _loss_tensor(trial: Any, regex: str | None) -> str:
    names = trial.tensor_names(regex=regex or LOSS_REGEX)
    if not names:
        raise TrialError("the trial saved no loss tensor (is the loss registered with the hook?)")
    return names[0]


# --------------------------------------------------------------------------------------------------
# The rules


def _make_rules() -> dict[str, type]:
    Rule = _rule_base()
    modes = _modes()

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
                names.update(base_trial.tensor_names(regex=_check("tensor_regex", tensor_regex, str)))
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
            self.acts = base_trial.tensor_names(regex=_check("activation_inputs_regex", activation_inputs_regex, str))
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
                names += base_trial.tensor_names(regex=_check("tensor_regex", tensor_regex, str))
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
            labels = base_trial.tensor_names(regex=_check("labels_regex", labels_regex, str))
            preds = base_trial.tensor_names(regex=_check("predictions_regex", predictions_regex, str))
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

    return {cls.__name__: cls for cls in (VanishingGradient, ExplodingTensor, Overfit, Overtraining,
                                          PoorWeightInitialization, LossNotDecreasing, ClassImbalance)}


# --------------------------------------------------------------------------------------------------
# Catalogue and evaluation


@dataclass(frozen=True)
class RuleInfo:
    name: str  # SageMaker's rule_configs function
    cls: str
    meaning: str
    action: str


RULES: tuple[RuleInfo, ...] = (
    RuleInfo("vanishing_gradient", "VanishingGradient",
             "Gradients became so small that the weights barely change: learning has stalled.",
             "Use a normalised architecture or a larger learning rate; check the initialisation."),
    RuleInfo("exploding_tensor", "ExplodingTensor",
             "A tensor holds NaN or infinite values: the training diverged.",
             "Lower the learning rate, clip gradients, check the input data for NaNs."),
    RuleInfo("overfit", "Overfit",
             "Validation loss is well above training loss: the model memorises the training set.",
             "Add regularisation (dropout, weight decay, augmentation), more data, or stop earlier."),
    RuleInfo("overtraining", "Overtraining",
             "The loss stopped improving: more epochs only cost time and risk overfitting.",
             "Use early stopping (patience) or fewer epochs."),
    RuleInfo("poor_weight_initialization", "PoorWeightInitialization",
             "Activations or gradients at the start look badly scaled across layers.",
             "Use a standard initialisation (Kaiming/Xavier) or pretrained weights."),
    RuleInfo("loss_not_decreasing", "LossNotDecreasing",
             "The loss stopped going down between checks.",
             "Check the learning rate (too high or too low) and the data labels."),
    RuleInfo("class_imbalance", "ClassImbalance",
             "Some classes have far more samples than others, or a class is mostly mispredicted.",
             "Rebalance the data (sampling or class weights) and watch per-class accuracy."),
)


@dataclass
class RuleResult:
    rule: str
    status: str  # IssuesFound | NoIssuesFound | Error
    first_step: int | None
    detail: str
    meaning: str
    action: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_trial(path: str | Path) -> Any:
    """An smdebug trial over a finished job's tensors; :class:`TrialError` when there is nothing to analyse."""
    quiet_smdebug()
    from smdebug.trials import create_trial

    path = Path(path)
    if not path.is_dir() or not any(path.iterdir()):
        raise TrialError(f"{path} holds no Debugger tensors: was the job run with the hook on (debugger=True)?")
    try:
        trial = create_trial(str(path))
        steps = trial.steps()
    except Exception as e:  # noqa: BLE001 - smdebug raises several types for unreadable folders
        raise TrialError(f"{path} is not a readable Debugger trial ({type(e).__name__}: {e}).") from None
    if not steps:
        raise TrialError(f"The trial in {path} has no saved steps: the job saved nothing (too few steps for the "
                         "save interval?).")
    if not trial.loaded_all_steps and not (path / "training_job_end.ts").exists():
        # a job that died before hook.close(): analyse what is there instead of waiting for more
        (path / "training_job_end.ts").write_text("")
    return trial


def evaluate_rule(trial: Any, info: RuleInfo, params: dict[str, Any] | None = None) -> RuleResult:
    """Run one rule over every step of the trial; never raises for a rule that cannot run."""
    quiet_smdebug()
    from smdebug.exceptions import NoMoreData, RuleEvaluationConditionMet
    from smdebug.rules.rule_invoker import invoke_rule

    params = params or {}
    try:
        rule = _make_rules()[info.cls](trial, **params)
    except (RuleConfigError, TrialError) as e:
        return RuleResult(info.name, "Error", None, str(e), info.meaning, info.action)
    except TypeError as e:
        return RuleResult(info.name, "Error", None, f"bad parameters for {info.cls}: {e}", info.meaning, info.action)
    try:
        invoke_rule(rule, start_step=0, end_step=trial.steps()[-1] + 1, raise_eval_cond=True)
    except RuleEvaluationConditionMet as e:
        reason = getattr(rule, "last_reason", "") or f"condition met at step {e.step}"
        return RuleResult(info.name, "IssuesFound", int(e.step), reason, info.meaning, info.action)
    except NoMoreData:
        pass
    except Exception as e:  # noqa: BLE001 - the table shows the error instead of a traceback
        return RuleResult(info.name, "Error", None, f"{type(e).__name__}: {e}", info.meaning, info.action)
    return RuleResult(info.name, "NoIssuesFound", None, "", info.meaning, info.action)


def evaluate_rules(tensors_dir: str | Path, params: dict[str, dict[str, Any]] | None = None,
                   rules: tuple[RuleInfo, ...] = RULES) -> list[RuleResult]:
    """Every rule on a job's tensors: the results table of the chapter."""
    params = params or {}
    unknown = sorted(set(params) - {r.name for r in rules})
    if unknown:
        raise RuleConfigError(f"unknown rule(s) {', '.join(unknown)}; rules are {', '.join(r.name for r in rules)}")
    trial = open_trial(tensors_dir)
    return [evaluate_rule(trial, info, params.get(info.name)) for info in rules]


def results_table(results: list[RuleResult]):
    """The results as a DataFrame: rule, status, first step, detail, what it means, what to do."""
    import pandas as pd

    df = pd.DataFrame([r.to_dict() for r in results])
    df["first_step"] = df["first_step"].astype("Int64")
    df = df.rename(columns={"first_step": "first step", "meaning": "what it means", "action": "what to do"})
    return df.set_index("rule")


# --------------------------------------------------------------------------------------------------
# What the chapter plots


def loss_curves(trial: Any) -> dict[str, tuple[list[int], list[float]]]:
    """Training and validation loss per global step (the seeds' ``CrossEntropyLoss_output_0`` chart)."""
    modes = _modes()
    name = _loss_tensor(trial, None)
    out = {}
    for label, mode in (("train", modes.TRAIN), ("valid", modes.EVAL)):
        t = trial.tensor(name)
        steps = t.steps(mode=mode)
        out[label] = ([trial.global_step(mode, s) for s in steps],
                      [float(np.asarray(t.value(s, mode=mode))) for s in steps])
    return out


def gradient_norms(trial: Any, max_layers: int = 12) -> dict[str, tuple[list[int], list[float]]]:
    """L2 norm of each parameter's gradient over training steps (the largest ``max_layers`` layers)."""
    modes = _modes()
    out = {}
    for name in trial.tensor_names(collection="gradients"):
        t = trial.tensor(name)
        steps = t.steps(mode=modes.TRAIN)
        vals = []
        for s in steps:
            try:
                vals.append(float(t.reduction_value(s, "l2", mode=modes.TRAIN)))
            except Exception:  # noqa: BLE001 - raw tensor saved instead of reductions
                vals.append(float(np.linalg.norm(np.asarray(t.value(s, mode=modes.TRAIN)))))
        out[re.sub(r"^gradient/", "", name)] = ([trial.global_step(modes.TRAIN, s) for s in steps], vals)
    ranked = sorted(out, key=lambda k: -max(out[k][1] or [0]))
    return {k: out[k] for k in ranked[:max_layers]}


def weight_distributions(trial: Any) -> dict[str, tuple[np.ndarray, np.ndarray, int, int]]:
    """For each saved weight tensor: its values at the first and at the last saved training step."""
    modes = _modes()
    out = {}
    for name in trial.tensor_names(collection="weights"):
        t = trial.tensor(name)
        steps = t.steps(mode=modes.TRAIN)
        if len(steps) >= 1:
            first, last = steps[0], steps[-1]
            out[name] = (np.asarray(t.value(first, mode=modes.TRAIN)).ravel(),
                         np.asarray(t.value(last, mode=modes.TRAIN)).ravel(),
                         trial.global_step(modes.TRAIN, first), trial.global_step(modes.TRAIN, last))
    return out


def rule_class(name: str) -> Callable[..., Any]:
    """The local rule class for a SageMaker rule name (``vanishing_gradient`` -> ``VanishingGradient``)."""
    info = next((r for r in RULES if r.name == name or r.cls == name), None)
    if info is None:
        raise RuleConfigError(f"unknown rule {name!r}; rules are {', '.join(r.name for r in RULES)}")
    return _make_rules()[info.cls]
