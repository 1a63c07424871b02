"""How the chapters show results: insights as Markdown lists that wrap, tables rounded to what matters.

A printed line is a ``<pre>`` block in the rendered book: it does not wrap, and a long sentence is cut
off at the column's edge. :func:`bullets` renders the computed sentences as a Markdown list instead.
:func:`tidy` rounds a table's numbers to three significant digits (``0.647059`` reads ``0.647``,
``338.361708`` reads ``338``) and drops the columns that say nothing (all zero or empty).
:func:`relative` and :func:`log_to_page` keep the work folder's absolute path (``/tmp/...``, a home
folder) off the page: paths under it show relative to it.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from pathlib import Path
from typing import Any, Iterable

#: Markdown that a computed sentence must not trigger: emphasis, HTML, headings, tables, links.
_SPECIAL = re.compile(r"([\\*_<>#|\[\]])")


def escape(text: str) -> str:
    """``text`` as literal Markdown; inline code spans (between backticks) stay code."""
    parts = text.split("`")
    return "`".join(p if i % 2 else _SPECIAL.sub(r"\\\1", p) for i, p in enumerate(parts))


def bullet_markdown(lines: Iterable[str]) -> str:
    """The Markdown source of a list, one item per line (empty lines left out)."""
    return "\n".join(f"- {escape(line.strip())}" for line in lines if line and line.strip())


def bullets(lines: Iterable[str]) -> Any:
    """Computed sentences as a Markdown list, for a notebook cell to display (wraps at any width)."""
    from IPython.display import Markdown

    return Markdown(bullet_markdown(lines))


def number(x: Any, digits: int = 3) -> Any:
    """A float rounded to ``digits`` significant digits, at most to a whole number; anything else as it is."""
    if isinstance(x, bool) or not isinstance(x, float) or not math.isfinite(x) or x == 0:
        return x
    magnitude = math.floor(math.log10(abs(x)))
    decimals = max(0, digits - 1 - magnitude)
    return round(x, decimals)


def _missing(v: Any) -> bool:
    """None, NaN, pandas' NA (a nullable integer column's gap) or an empty string."""
    if v is None or (isinstance(v, str) and v == ""):
        return True
    import pandas as pd

    return bool(pd.api.types.is_scalar(v) and pd.isna(v))


def _says_nothing(column: Any) -> bool:
    values = [v for v in column.tolist() if not _missing(v)]
    return not values or all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0 for v in values)


def tidy(frame: Any, digits: int = 3, keep: Iterable[str] = ()) -> Any:
    """A copy of ``frame`` for the page: numbers to ``digits`` significant digits (as text, so that a column
    of 0.5 and 338 does not read 0.500 and 338.000), all-zero or empty columns dropped (except ``keep``)."""
    keep = set(keep)
    out = frame.drop(columns=[c for c in frame.columns if c not in keep and _says_nothing(frame[c])])
    for c in out.columns:
        if out[c].dtype.kind == "f" or out[c].dtype == object:
            out[c] = [_text(v, digits) for v in out[c]]
        elif out[c].hasnans:  # a nullable integer column: its gaps read empty, not <NA>
            out[c] = ["" if _missing(v) else v for v in out[c]]
    return out


def _text(v: Any, digits: int) -> Any:
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        r = number(v, digits)
        return f"{r:,.0f}" if float(r).is_integer() and abs(r) >= 1 else f"{r:g}"  # 1e6 and up are whole
    return v


def relative(value: Any, root: str | Path) -> Any:
    """``value`` with paths under the work folder ``root`` made relative to it (the folder itself is ``.``), also
    inside strings (``sqlite:////tmp/w/mlflow.db`` becomes ``sqlite:///mlflow.db``), dicts, lists and tuples."""
    prefixes = sorted({str(Path(root)), str(Path(root).resolve())}, key=len, reverse=True)
    if isinstance(value, Path):
        for prefix in prefixes:
            if value.is_relative_to(prefix):  # the folder itself too
                return value.relative_to(prefix)
        return value
    if isinstance(value, str):
        for prefix in prefixes:
            value = re.sub(re.escape(prefix) + r"(/|(?![\w-]|\.\w))", lambda m: "" if m.group(1) else ".", value)
        return value
    if isinstance(value, dict):
        return {k: relative(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(relative(v, root) for v in value)
    return value


class _RelativePaths(logging.Filter):
    def __init__(self, root: str | Path) -> None:
        super().__init__()
        self.root = root

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = relative(record.getMessage(), self.root), None
        return True


def log_to_page(root: str | Path, level: int = logging.WARNING) -> None:
    """A chapter's logging: one line per record on stdout (stderr renders as an alarming red block in the book),
    with paths relative to the work folder ``root``."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RelativePaths(root))
    logging.basicConfig(level=level, handlers=[handler], force=True)
