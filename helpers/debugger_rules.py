"""The seven SageMaker Debugger built-in rules, evaluated locally on an smdebug trial.

SageMaker Debugger is closed to new customers since 2026-07-30, and the built-in rules only ever ran
inside AWS's rule container. These are ``smdebug.rules.Rule`` subclasses with the documented names,
parameters and default values (module-level classes in :mod:`helpers.debugger_rule_classes`, which
imports smdebug; this module does not until a rule runs), so the same analysis runs on a local job's
``output/tensors`` or on the tensors a SageMaker job uploaded with its output. Where the documentation
leaves the exact computation open, the docstring of each rule says what is computed here.

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

from helpers.runtime.debugger import ACTIVATION_INPUTS, quiet_smdebug

log = logging.getLogger(__name__)

LOSS_REGEX = r"[Ll]oss_(?!input).*output"


class RuleConfigError(ValueError):
    """A rule parameter has the wrong type or value."""


class TrialError(ValueError):
    """The trial folder holds no usable steps."""


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


def tensor_names(trial: Any, regex: str) -> list[str]:
    """The trial's tensors whose names match ``regex`` anywhere (as ``trial.tensor_names(regex=...)`` matches), but
    without smdebug's warning line when none do: a rule that finds none says so in its result, not on the page."""
    rx = re.compile(regex)
    return [n for n in trial.tensor_names() if rx.search(n)]


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
    names = tensor_names(trial, regex or LOSS_REGEX)
    if not names:
        raise TrialError("the trial saved no loss tensor (is the loss registered with the hook?)")
    return names[0]


# --------------------------------------------------------------------------------------------------
# The rules


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
             "The loss has made no new low for several epochs in a row (training: 5, validation: 10, each "
             "epoch's mean): the model has stopped getting better, and more epochs only cost time and risk "
             "overfitting.",
             "Stop earlier: early stopping on the validation loss (patience), fewer epochs, and keep the best "
             "epoch's weights (the entry point does)."),
    RuleInfo("poor_weight_initialization", "PoorWeightInitialization",
             "Activations or gradients at the start look badly scaled across layers.",
             "Use a standard initialisation (Kaiming/Xavier) or pretrained weights."),
    RuleInfo("loss_not_decreasing", "LossNotDecreasing",
             "Within a short window (the mean of the last 10 saved losses against the 10 before) the loss fell "
             "by less than 0.1% or rose: progress right now is flat or reversed, which a learning rate that "
             "is too low (a crawl) or too high (bouncing) can cause, even while the best epoch is still improving.",
             "Check the learning rate first, then that the labels match the images."),
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


#: Parameters this book sets apart from SageMaker's defaults: the activation inputs the hook records are the
#: ReLU layers' (``...relu_input_0``) and, for timm's networks, whose ReLU6 sits in each block's ``act``,
#: ``...act_input_0`` (``helpers.runtime.debugger.ACTIVATION_INPUTS``); SageMaker's default sees the first only.
BOOK_PARAMS: dict[str, dict[str, Any]] = {
    "poor_weight_initialization": {"activation_inputs_regex": ACTIVATION_INPUTS},
}
#: The activation inputs of the new head only (an ``mlp`` head's ReLU).
HEAD_ACTIVATION_INPUTS = r"TransferModel_head.*(relu|\.act)_input"


def rule_params(hyperparameters: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rule parameters for a job with these hyperparameters. ``poor_weight_initialization`` judges the weights this
    job initialised: with pretrained weights the body's activations are ImageNet's, whose scale differs from layer
    to layer by design, so only the new head's activations count."""
    if str(hyperparameters.get("weights", "none")) != "none":
        return {"poor_weight_initialization": {"activation_inputs_regex": HEAD_ACTIVATION_INPUTS}}
    return {}


def evaluate_rule(trial: Any, info: RuleInfo, params: dict[str, Any] | None = None) -> RuleResult:
    """Run one rule over every step of the trial; never raises for a rule that cannot run."""
    quiet_smdebug()
    from smdebug.exceptions import NoMoreData, RuleEvaluationConditionMet
    from smdebug.rules.rule_invoker import invoke_rule

    params = {**BOOK_PARAMS.get(info.name, {}), **(params or {})}
    try:
        rule = rule_class(info.name)(trial, **params)
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


def results_table(results: list[RuleResult], spans: list[tuple[int, int, int]] | None = None, *,
                  explained: bool = True):
    """The results as a DataFrame: rule, status, first step (and its epoch, given the trial's ``spans``), detail,
    and unless ``explained`` is False what it means and what to do (the page puts those under the table:
    :func:`explanations`)."""
    import pandas as pd

    df = pd.DataFrame([r.to_dict() for r in results])
    df["first_step"] = df["first_step"].astype("Int64")
    if spans is not None:
        df.insert(df.columns.get_loc("first_step") + 1, "epoch",
                  pd.array([epoch_of(s, spans) if s is not pd.NA else None for s in df["first_step"]], dtype="Int64"))
    if not explained:
        df = df.drop(columns=["meaning", "action"])
    df = df.rename(columns={"first_step": "first step", "meaning": "what it means", "action": "what to do"})
    return df.set_index("rule")


def explanations(results: list[RuleResult]) -> list[str]:
    """One sentence pair per rule, what it means and what to do, for the list under the results table."""
    return [f"`{r.rule}` ({'fired' if r.status == 'IssuesFound' else r.status}): {r.meaning} What to do: {r.action}"
            for r in results]


def epoch_spans(trial: Any) -> list[tuple[int, int, int]]:
    """``(epoch, first global step, last global step)`` of every epoch. smdebug numbers its steps across modes,
    so an epoch's global steps are its training batches and then its validation batches: a run of TRAIN
    steps with the EVAL steps after it. (The test split, evaluated after the last epoch, counts in that one.)"""
    modes = _modes()
    phases = loss_phases(trial, _loss_tensor(trial, None))
    starts = [ph["start"] for ph in phases if ph["mode"] == modes.TRAIN]
    if not starts:
        return []
    ends = [s - 1 for s in starts[1:]] + [max(ph["end"] for ph in phases)]
    return [(i + 1, a, b) for i, (a, b) in enumerate(zip(starts, ends))]


def epoch_of(step: int, spans: list[tuple[int, int, int]]) -> int | None:
    """The epoch a global step belongs to (None outside every span)."""
    return next((e for e, a, b in spans if a <= step <= b), None)


def step_insights(results: list[RuleResult], spans: list[tuple[int, int, int]], kept_epoch: int | None) -> list[str]:
    """Relate the steps where rules fired to epochs, and to the epoch whose weights were kept."""
    if not spans:
        return []
    per_epoch = [b - a + 1 for _, a, b in spans[:-1]] or [spans[0][2] - spans[0][1] + 1]
    lines = [f"Debugger numbers steps across training and validation: an epoch here spans about "
             f"{round(sum(per_epoch) / len(per_epoch))} global steps (its training batches, then its validation "
             f"batches), so the {len(spans)} epochs run from step {spans[0][1]} to step {spans[-1][2]}."]
    for r in results:
        if r.status != "IssuesFound" or r.first_step is None:
            continue
        epoch = epoch_of(r.first_step, spans)
        if epoch is None:
            continue
        if kept_epoch is None:
            when = ""
        elif epoch > kept_epoch:
            when = (f", after epoch {kept_epoch}, whose weights are the model kept: it describes epochs the kept "
                    "model did not train")
        elif epoch == kept_epoch:
            when = ", the epoch whose weights are the model kept"
        else:
            when = f", before epoch {kept_epoch}, whose weights are kept: it describes the way there"
        lines.append(f"`{r.rule}` fired at step {r.first_step}, in epoch {epoch}{when}.")
    return lines


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
    from helpers.debugger_rule_classes import RULE_CLASSES  # imports smdebug: only when a rule is evaluated

    return RULE_CLASSES[info.cls]
