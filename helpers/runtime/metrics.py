"""The one metric line format the training script prints, and the regexes that read it.

A line looks like::

    #metrics split=valid epoch=3 loss=0.4123 accuracy=0.8731

``split`` is ``train``, ``valid`` or ``test`` (test lines carry ``epoch=final``). The same regexes are
the SageMaker ``metric_definitions`` (CloudWatch and the tuner read the job log with them) and what
the local job runner parses, so a metric name means the same thing on both backends.
"""

from __future__ import annotations

import re
from collections import defaultdict

PREFIX = "#metrics"
_NUMBER = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))"

#: metric name -> regex with one group, the value.
METRIC_REGEXES: dict[str, str] = {
    f"{split}:{name}": rf"{PREFIX} split={split} epoch=\S+ .*?\b{name}={_NUMBER}"
    for split in ("train", "valid", "test")
    for name in ("loss", "accuracy")
}
#: The last epoch a job finished (a trial stopped early reports fewer than it planned).
METRIC_REGEXES["epoch"] = rf"{PREFIX} split=valid epoch=(\d+) "

#: The tuning objective: a validation metric, never the test split.
OBJECTIVE_METRIC = "valid:accuracy"
OBJECTIVE_TYPE = "Maximize"


def format_metrics(split: str, epoch: int | str, **values: float) -> str:
    """One metric line, e.g. ``#metrics split=valid epoch=3 loss=0.4123 accuracy=0.8731``."""
    parts = " ".join(f"{k}={v:.6g}" for k, v in values.items())
    return f"{PREFIX} split={split} epoch={epoch} {parts}"


def metric_definitions() -> list[dict[str, str]]:
    """The ``metric_definitions`` argument of a SageMaker estimator."""
    return [{"Name": name, "Regex": regex} for name, regex in METRIC_REGEXES.items()]


_COMPILED = {name: re.compile(regex) for name, regex in METRIC_REGEXES.items()}


def parse_line(line: str) -> dict[str, float]:
    """The metrics one log line carries (empty for other lines)."""
    if PREFIX not in line:
        return {}
    return {name: float(m.group(1)) for name, rx in _COMPILED.items() if (m := rx.search(line))}


def parse_log(text: str) -> dict[str, list[float]]:
    """Every value of every metric in a log, in order."""
    out: dict[str, list[float]] = defaultdict(list)
    for line in text.splitlines():
        for name, value in parse_line(line).items():
            out[name].append(value)
    return dict(out)
