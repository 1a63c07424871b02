"""Progress bars: tqdm, unless turned off by the caller or by ``SAGEBOOK_PROGRESS=0``.

The book runner sets ``SAGEBOOK_PROGRESS=0`` so executed chapters carry results, not bar redraws.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm

ENV = "SAGEBOOK_PROGRESS"


def enabled(progress: bool = True) -> bool:
    return progress and os.environ.get(ENV, "1") != "0"


def bar(iterable: Any = None, *, progress: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one), disabled when progress is off."""
    return tqdm(iterable, disable=not enabled(progress), dynamic_ncols=True, **kwargs)
