"""Execute the chapters with papermill into ``book/`` and build the HTML book with jupyter-book.

    python -m helpers.book [--dataset D] [--backbone B] [-p NAME VALUE ...] [--only 01,02] [--no-build]

Chapters run in order from ``notebooks/`` with the notebook folder as working directory (as nbval
and Jupyter do); executed copies go to ``book/``. A failing chapter stops the run and names the
chapter and cell. The build runs with notebook execution off and warnings as errors.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers.runtime import progress
from helpers.config import ConfigError, RunConfig, temporary_environ

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BOOK = ROOT / "book"


#: Set by the runner for the kernels: where executed chapters go, so a chapter can publish files for the book.
BOOK_DIR_ENV = "SAGEBOOK_BOOK_DIR"
#: Copied as is to the root of the HTML output (Sphinx ``html_extra_path`` in ``_config.yml``).
EXTRA = "_extra"
#: Wall time of each chapter of the latest run, read by the performance appendix.
TIMINGS = "chapter_times.json"
ASSETS = "_assets"


def publish(path: str | os.PathLike[str], name: str | None = None) -> str:
    """Make a file (a report) part of the HTML book and return the link to it from a chapter page.

    The file is copied to ``book/_extra/_assets/``, which the build copies to ``_build/html/_assets/``.
    Outside the book runner it returns the file's own path (a link that works in Jupyter).
    """
    import shutil

    book_dir = os.environ.get(BOOK_DIR_ENV)
    if not book_dir:
        return str(path)
    dest = Path(book_dir) / EXTRA / ASSETS / (name or Path(path).name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, dest)
    return f"../{ASSETS}/{dest.name}"  # chapter pages are one level down, in book/


class BookError(RuntimeError):
    """A chapter failed or the book did not build; the message says where."""


@dataclass(frozen=True)
class ChapterRun:
    name: str
    seconds: float


def chapters(notebooks: Path = NOTEBOOKS) -> list[Path]:
    """The numbered chapter notebooks, in order."""
    return sorted(p for p in notebooks.glob("[0-9][0-9]_*.ipynb"))


def parse_value(text: str) -> Any:
    """``-p`` values the way papermill's CLI reads them: Python literals where they parse, else strings."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def notebook_parameters(path: Path) -> dict[str, Any]:
    import papermill

    return papermill.inspect_notebook(str(path))


def check_parameters(params: dict[str, Any], notebooks: list[Path]) -> dict[Path, dict[str, Any]]:
    """Each chapter's share of ``params``; unknown names and invalid run parameters fail before any work."""
    declared = {nb: notebook_parameters(nb) for nb in notebooks}
    known = set().union(*declared.values()) if declared else set()
    unknown = sorted(set(params) - known)
    if unknown:
        raise BookError(f"Unknown parameter(s) {', '.join(unknown)}; the chapters take: {', '.join(sorted(known))}")
    fields = set(RunConfig.field_names())
    RunConfig(**{k: v for k, v in params.items() if k in fields})  # raises ConfigError listing the choices
    return {nb: {k: v for k, v in params.items() if k in names} for nb, names in declared.items()}


def _failed_cell(nb_path: Path) -> str:
    """Describe the cell of an executed notebook that holds the error, counting the author's code cells."""
    try:
        cells = json.loads(nb_path.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return "an unknown cell"
    injected = {"injected-parameters", "papermill-error-cell-tag"}
    code = [c for c in cells if c["cell_type"] == "code" and not injected & set(c.get("metadata", {}).get("tags", []))]
    for k, cell in enumerate(code, start=1):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            lines = "".join(cell["source"]).strip().splitlines() or [""]
            return f"code cell {k} (`{lines[0][:70]}`)"
    return "an unknown cell"


def ipc_kernel_manager() -> type:
    """The chapters' kernel manager: the kernel talks over Unix sockets in the temp folder (jupyter_client's ``ipc``
    transport), so no TCP port opens and ipykernel has no "running over TCP without encryption" warning to print."""
    import tempfile
    import uuid

    from jupyter_client.manager import AsyncKernelManager

    class IpcKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("transport", "ipc")  # the sockets are named after the connection file:
            kwargs.setdefault("connection_file", os.path.join(  # a short path (a socket's is at most 107 bytes)
                tempfile.gettempdir(), f"sagebook-kernel-{uuid.uuid4().hex[:12]}.json"))
            super().__init__(**kwargs)

    return IpcKernelManager


def run_chapter(nb: Path, params: dict[str, Any], out_dir: Path = BOOK) -> ChapterRun:
    """Execute one chapter into ``out_dir``; :class:`BookError` names the chapter and cell on failure."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out = out_dir / nb.name
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(nb), str(out), parameters=params, cwd=str(nb.parent),
            progress_bar=sys.stderr.isatty(), log_output=False, kernel_manager_class=ipc_kernel_manager(),
            # the chapter's state is on disk when its last cell ends; the kernel's interpreter teardown (torch, the
            # SDK, MLflow) took 0.5-2.6 s of every chapter's time, and nothing of the chapter's runs in it
            shutdown_kernel="immediate",
        )
    except PapermillExecutionError as e:
        raise BookError(
            f"Chapter {nb.stem} failed in {_failed_cell(out)}: {e.ename}: {e.evalue}\n"
            f"The executed notebook with the error is {out}."
        ) from None
    drop_empty_outputs(out)
    return ChapterRun(nb.stem, time.perf_counter() - start)


def _empty(output: Any) -> bool:
    """A display with nothing to show: the SDK's ``wait()`` draws an empty rich panel (``<pre ...></pre>``)."""
    import re

    if output.get("output_type") != "display_data":
        return False
    data = output.get("data", {})
    html = re.sub(r"<pre[^>]*>\s*</pre>", "", data.get("text/html", "")).strip()
    return set(data) <= {"text/html", "text/plain"} and not html and not data.get("text/plain", "").strip()


def drop_empty_outputs(path: Path) -> int:
    """Remove the displays that show nothing from an executed chapter (each would be a blank grey block on the
    page); returns how many."""
    import nbformat

    notebook = nbformat.read(str(path), as_version=4)
    dropped = 0
    for cell in notebook.cells:
        if cell.cell_type == "code":
            kept = [o for o in cell.outputs if not _empty(o)]
            dropped += len(cell.outputs) - len(kept)
            cell.outputs = kept
    if dropped:
        nbformat.write(notebook, str(path))
    return dropped


def stub_unexecuted(nb: Path, out_dir: Path = BOOK) -> None:
    """Put an unexecuted copy of a chapter in the book, with a banner, when it has no executed copy yet."""
    import nbformat

    notebook = nbformat.read(str(nb), as_version=4)
    banner = nbformat.v4.new_markdown_cell(
        "```{warning}\nThis chapter has not been executed yet: run `python -m helpers.book` to fill it in.\n```"
    )
    notebook.cells.insert(1, banner)
    nbformat.write(notebook, str(out_dir / nb.name))


def build(root: Path = ROOT) -> Path:
    """Run ``jupyter-book build`` (execution off, warnings as errors) and return ``index.html``."""
    (root / "book" / EXTRA).mkdir(parents=True, exist_ok=True)  # html_extra_path must exist
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root), "--warningiserror", "--keep-going"]
    log.info("$ %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        raise BookError(f"jupyter-book build failed (exit {proc.returncode}):\n{tail}")
    index = root / "_build" / "html" / "index.html"
    if not index.exists():
        raise BookError(f"jupyter-book finished but {index} is missing")
    return index


def run(params: dict[str, Any], only: Sequence[str] | None = None, *, do_build: bool = True,
        notebooks: Path = NOTEBOOKS, out_dir: Path = BOOK,
        keep_endpoint: bool = False) -> tuple[list[ChapterRun], Path | None]:
    """Execute the selected chapters in order, clean up what they created, then build the book."""
    all_chapters = chapters(notebooks)
    if not all_chapters:
        raise BookError(f"No chapter notebooks found in {notebooks}")
    selected = [nb for nb in all_chapters if not only or nb.name[:2] in only]
    missing = sorted(set(only or []) - {nb.name[:2] for nb in all_chapters})
    if missing:
        raise BookError(f"No chapter numbered {', '.join(missing)}; chapters: "
                        f"{', '.join(nb.stem for nb in all_chapters)}")
    per_chapter = check_parameters(params, selected)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    failure: BaseException | None = None
    try:
        # kernels inherit: no progress-bar redraws in the book, and where chapters publish files
        with temporary_environ(**{progress.ENV: "0", BOOK_DIR_ENV: str(out_dir.resolve())}):
            for nb in selected:
                print(f"▶ {nb.stem} ...", flush=True)
                runs.append(run_chapter(nb, per_chapter[nb], out_dir))
                print(f"  {nb.stem} done in {runs[-1].seconds:.1f} s", flush=True)
                _write_timings(out_dir.parent / "_build" / TIMINGS, params, runs)  # the appendix reads them
    except BaseException as e:
        failure = e
        raise
    finally:
        try:  # also when a chapter failed: an endpoint left running costs money
            teardown(params, keep_endpoint=keep_endpoint)
        except Exception as e:  # noqa: BLE001 - never hide the chapter's own error behind the cleanup's
            note = f"The cleanup failed: {e}"
            if failure is None:
                raise BookError(note) from None
            print(f"  {note}", file=sys.stderr, flush=True)
    for nb in all_chapters:
        if not (out_dir / nb.name).exists():
            stub_unexecuted(nb, out_dir)
    if do_build and any(nb.name.startswith("02") for nb in selected):
        print(" ", mlflow_screenshot(params, out_dir), flush=True)
    return runs, build(notebooks.parent) if do_build else None


def mlflow_screenshot(params: dict[str, Any], out_dir: Path = BOOK) -> str:
    """MLflow's UI over the run's store, as chapter 2 shows it (``_assets/mlflow-ui.png``)."""
    from helpers import tracking

    cfg = RunConfig.from_mapping(params)
    return tracking.book_screenshot(cfg, out_dir / EXTRA / "_assets" / tracking.UI_SHOT)


def _write_timings(path: Path, params: dict[str, Any], runs: list[ChapterRun]) -> None:
    from helpers.runtime.fileio import atomic_write_json

    atomic_write_json(path, {"params": {k: str(v) for k, v in params.items()}, "cores": os.cpu_count(),
                             "chapters": {r.name: round(r.seconds, 2) for r in runs}})


def teardown(params: dict[str, Any], keep_endpoint: bool = False) -> list[str]:
    """Remove what the run created (its ledger) and stop its local SageMaker; with ``keep_endpoint``, the
    endpoint and what serves and calls it stay (and the local SageMaker runs on)."""
    from helpers.session import teardown as teardown_run

    fields = set(RunConfig.field_names())
    cfg = RunConfig(**{k: v for k, v in params.items() if k in fields})
    removed = teardown_run(cfg, keep_endpoint=keep_endpoint)
    print(f"  cleaned up: {', '.join(removed) if removed else 'nothing was left'}")
    if keep_endpoint:
        print(f"  the endpoint stays: python -m helpers.cleanup --work-dir {cfg.work_path} removes it")
    return removed


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m helpers.book", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", help="dataset source (digits, dogImages, synthetic, a folder, a zip URL, s3://...)")
    p.add_argument("--backbone", help="torchvision backbone name, e.g. resnet50")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="a chapter parameter (repeatable), e.g. -p image_size 128")
    p.add_argument("--only", help="comma-separated chapter numbers to run, e.g. 01,02")
    p.add_argument("--no-build", action="store_true", help="execute the chapters but do not build the HTML")
    p.add_argument("--keep-endpoint", action="store_true",
                   help="leave the endpoint (and its Lambda function) running; python -m helpers.cleanup removes it")
    p.add_argument("--dry-run", action="store_true",
                   help="check the parameters and print what would run, without running anything")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.WARNING)
    params = {name: parse_value(value) for name, value in args.parameter}
    for name in ("dataset", "backbone"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    only = [c.strip().zfill(2) for c in args.only.split(",") if c.strip()] if args.only else None
    if args.dry_run:
        try:
            selected = [nb for nb in chapters() if not only or nb.name[:2] in only]
            for nb, p in check_parameters(params, selected).items():
                print(f"would run {nb.stem} with {p or 'its defaults'}")
        except (BookError, ConfigError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        runs, index = run(params, only, do_build=not args.no_build, keep_endpoint=args.keep_endpoint)
    except (BookError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    total = sum(r.seconds for r in runs)
    print(f"Executed {len(runs)} chapter(s) in {total:.1f} s.")
    if index is not None:
        print(f"The book is at {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
