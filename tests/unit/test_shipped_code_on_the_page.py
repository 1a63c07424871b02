"""The chapters show shipped code with ``literalinclude`` from the files themselves: every include must name a
file that exists and, with ``:pyobject:``, a function or class it defines; a rename must fail here, not leave
an empty block or a Sphinx warning in the book."""

import ast
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
INCLUDE = re.compile(r"```\{literalinclude\} (\S+)\n((?::\w+: .*\n)*)```")


def includes(nb: Path) -> list[tuple[str, dict[str, str]]]:
    found = []
    for cell in nbformat.read(nb, 4).cells:
        if cell.cell_type == "markdown":
            for path, opts in INCLUDE.findall(cell.source + "\n"):
                found.append((path, dict(re.findall(r":(\w+): (.*)", opts))))
    return found


def test_the_chapters_show_the_shipped_files():
    shown = {(Path(p).name, o.get("pyobject")) for nb in NOTEBOOKS for p, o in includes(nb)}
    assert {("train.py", "resolve_paths"), ("models.py", "make_head"), ("metrics.py", "format_metrics"),
            ("debugger.py", "make_hook"), ("inference.py", "model_fn"), ("inference.py", "input_fn"),
            ("inference.py", "predict_fn"), ("inference.py", "output_fn"), ("deployment.py", None),
            ("lambda_function.py", "lambda_handler")} <= shown


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_include_names_a_file_and_object_that_exist(nb):
    for path, opts in includes(nb):
        target = (nb.parent / path).resolve()  # the executed copy in book/ is one folder down from the root too
        assert target.is_file() and (ROOT / "book" / path).resolve() == target, path
        if "pyobject" in opts:
            names = {n.name for n in ast.parse(target.read_text()).body
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
            assert opts["pyobject"] in names, f"{path} defines no {opts['pyobject']}"
