"""The book's workflow figure keeps its text at 10 px or more where the book shows it (624 px wide)."""

import re
from pathlib import Path

from helpers.plots import BOOK_COLUMN_PX, MIN_TEXT_PX

SVG = Path(__file__).resolve().parents[2] / "book" / "images" / "workflow.svg"


def test_workflow_text_is_readable_in_the_column():
    text = SVG.read_text()
    width = float(re.search(r'viewBox="0 0 ([\d.]+) ', text).group(1))
    sizes = [float(s) for s in re.findall(r'font-size="([\d.]+)"', text)]
    scale = min(1.0, BOOK_COLUMN_PX / width)
    assert sizes and min(sizes) * scale >= MIN_TEXT_PX, (min(sizes), scale)
