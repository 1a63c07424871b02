"""Strip outputs and execution counts from notebooks: ``python -m helpers.nbstrip notebooks/*.ipynb``."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def strip(path: str | Path) -> bool:
    """Remove outputs, execution counts and run metadata in place; True if the file changed."""
    nb = nbformat.read(str(path), as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in ("execution", "papermill", "collapsed", "scrolled"):
            cell.metadata.pop(key, None)
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    after = nbformat.writes(nb)
    if after != before:
        Path(path).write_text(after)
    return after != before


def main(argv: list[str]) -> int:
    for p in argv:
        if strip(p):
            print(f"stripped {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
