"""MLflow from the notebook side: the tracking store, the tuning job's parent run, and reading runs back.

The training jobs log their own runs (:mod:`helpers.runtime.tracking`); this module gives them somewhere to
log to and reads what they logged.

- **Locally** the store is SQLite in the work folder (``<work>/mlflow/mlflow.db``, artifacts beside it),
  which the training jobs on the local SageMaker write to directly. ``mlflow ui`` opens it
  (:func:`ui_command`).
- **On AWS** it is a SageMaker managed MLflow tracking server (or MLflow App), given by its ARN
  (``RunConfig.mlflow_arn``); the ``sagemaker-mlflow`` plugin turns the ARN into signed requests, from the
  notebook and from the jobs alike.

A tuning job is one parent run. Its trials are child runs (``mlflow.parentRunId``) that the jobs create;
:func:`reconcile_trials` then makes each child's status and objective agree with what the tuning job reports,
including trials that stopped before their script could say anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from helpers.runtime.tracking import (
    DEFAULT_EXPERIMENT,
    ENV_EXPERIMENT,
    ENV_PARENT,
    ENV_URI,
    PARENT_TAG,
    TAG_JOB,
)

log = logging.getLogger(__name__)

STORE_DIR = "mlflow"
ROOT = Path(__file__).resolve().parent.parent  # the checkout
#: A tuning job's status as the run status MLflow shows for its trial.
RUN_STATUS = {"Completed": "FINISHED", "Failed": "FAILED", "Stopped": "KILLED", "Stopping": "KILLED",
              "InProgress": "RUNNING"}
TAG_TUNING_JOB = "sagemaker.tuning_job_name"
OBJECTIVE = "objective"


def quiet() -> None:
    """MLflow and its database migrations log at INFO to stderr: keep rendered pages clean."""
    for name in ("mlflow", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def local_store(work_dir: str | Path) -> tuple[str, Path]:
    """The local store's tracking URI (SQLite) and its artifact folder, both in the work folder."""
    root = Path(work_dir).resolve() / STORE_DIR
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"


def enabled(cfg: Any) -> bool:
    """Whether the run tracks: always locally, on AWS when ``mlflow_arn`` names a tracking server."""
    return cfg.backend == "local" or bool(cfg.mlflow_arn)


def tracking_uri(cfg: Any) -> str:
    """The run's tracking URI: the managed server's ARN on the sagemaker backend, else the local store."""
    if cfg.backend == "sagemaker":
        if not cfg.mlflow_arn:
            raise ValueError("backend 'sagemaker' tracks to a SageMaker MLflow tracking server: set mlflow_arn "
                             "(arn:aws:sagemaker:REGION:ACCOUNT:mlflow-tracking-server/NAME; see the guide)")
        return cfg.mlflow_arn
    return local_store(cfg.work_dir)[0]


def client(cfg: Any) -> Any:
    """An ``MlflowClient`` on the run's store (the local one is created on first use, about 5 s)."""
    quiet()
    with warnings.catch_warnings():  # mlflow imports tqdm.auto, which warns when ipywidgets is absent
        warnings.simplefilter("ignore")
        from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(cfg))


def experiment_id(mlflow_client: Any, cfg: Any, name: str = DEFAULT_EXPERIMENT) -> str:
    """The experiment's id, created when missing (locally with its artifacts in the work folder)."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = local_store(cfg.work_dir)[1].as_uri() if cfg.backend == "local" else None
    return mlflow_client.create_experiment(name, artifact_location=location)


def job_environment(cfg: Any, experiment: str = DEFAULT_EXPERIMENT, parent_run_id: str | None = None) -> dict[str, str]:
    """The training job's ``Environment`` that turns tracking on in the entry point."""
    env = {ENV_URI: tracking_uri(cfg), ENV_EXPERIMENT: experiment}
    if parent_run_id:
        env[ENV_PARENT] = parent_run_id
    return env


def start_parent_run(mlflow_client: Any, exp_id: str, run_name: str, params: Mapping[str, Any]) -> str:
    """The tuning job's parent run, with the settings every trial shares; its id."""
    from mlflow.entities import Param

    run = mlflow_client.create_run(exp_id, run_name=run_name, tags={"sagebook.kind": "tuning"})
    mlflow_client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())])
    return run.info.run_id


def child_runs(mlflow_client: Any, exp_id: str, parent_run_id: str) -> list[Any]:
    return mlflow_client.search_runs([exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                     max_results=1000)


def reconcile_trials(mlflow_client: Any, exp_id: str, parent_run_id: str, tuning_job: str,
                     summaries: Iterable[Mapping[str, Any]], objective_name: str) -> None:
    """Make the parent's child runs say what the tuning job says of its trials.

    A trial stopped by early stopping, or killed, cannot end its own run; one that failed before its
    script started has none. Each summary of ``ListTrainingJobsForHyperParameterTuningJob`` gets a child run
    (created when missing) with the job's status and the tuner's objective value, and the parent gets the
    tuning job's name and best objective.
    """
    from mlflow.entities import Metric, Param

    by_job = {r.data.tags.get(TAG_JOB): r for r in child_runs(mlflow_client, exp_id, parent_run_id)}
    best = None
    for s in summaries:
        name = s["TrainingJobName"]
        run = by_job.get(name)
        if run is None:  # the job never reached its script (or could not reach the store)
            run = mlflow_client.create_run(exp_id, run_name=name, tags={PARENT_TAG: parent_run_id, TAG_JOB: name,
                                                                        TAG_TUNING_JOB: tuning_job})
            hps = {k: str(v).strip('"') for k, v in (s.get("TunedHyperParameters") or {}).items()}
            mlflow_client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in sorted(hps.items())])
        run_id = run.info.run_id
        mlflow_client.set_tag(run_id, TAG_TUNING_JOB, tuning_job)
        mlflow_client.set_tag(run_id, "sagemaker.training_job_status", s["TrainingJobStatus"])
        value = (s.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")
        if value is not None:
            mlflow_client.log_batch(run_id, metrics=[Metric(OBJECTIVE, float(value), int(time.time() * 1000), 0)])
            best = value if best is None else max(best, value)
        status = RUN_STATUS.get(s["TrainingJobStatus"], "FAILED")
        if status != "RUNNING":
            mlflow_client.set_terminated(run_id, status)
    mlflow_client.set_tag(parent_run_id, TAG_TUNING_JOB, tuning_job)
    mlflow_client.set_tag(parent_run_id, "objective_metric", objective_name)
    if best is not None:
        mlflow_client.log_batch(parent_run_id, metrics=[Metric(f"best_{OBJECTIVE}", float(best),
                                                               int(time.time() * 1000), 0)])
    mlflow_client.set_terminated(parent_run_id, "FINISHED")


#: A trial's MLflow run status as the state the chapter's trials table uses (``hpo``'s, Optuna's names).
TRIAL_STATE = {"FINISHED": "COMPLETE", "KILLED": "PRUNED", "FAILED": "FAIL", "RUNNING": "RUNNING",
               "SCHEDULED": "RUNNING"}


def trial_runs(mlflow_client: Any, exp_id: str, parent_run_id: str, params: Iterable[str]) -> Any:
    """The trials as MLflow has them, in the shape of the tuning job's table: one row per child run, numbered in
    job-name order, with its state, objective (``value``), tuned hyperparameters, the epochs it logged, the
    system-metric series it has, its job and run id (a pandas DataFrame)."""
    import pandas as pd

    from helpers.sagemaker_jobs import parse_hyperparameter

    runs = sorted(child_runs(mlflow_client, exp_id, parent_run_id), key=lambda r: r.data.tags.get(TAG_JOB, ""))
    rows = []
    for number, r in enumerate(runs):
        row: dict[str, Any] = {"number": number, "state": TRIAL_STATE.get(r.info.status, r.info.status),
                               "value": r.data.metrics.get(OBJECTIVE)}
        for p in params:
            if p in r.data.params:
                row[p] = parse_hyperparameter(r.data.params[p])  # as the tuning job's table has it
        row["epochs_run"] = len(mlflow_client.get_metric_history(r.info.run_id, "valid_accuracy")) or None
        row["system_metrics"] = sum(k.startswith("system/") for k in r.data.metrics)
        row["job"] = r.data.tags.get(TAG_JOB, r.info.run_name)
        row["run_id"] = r.info.run_id
        rows.append(row)
    return pd.DataFrame(rows)


def disagreements(from_mlflow: Any, from_tuner: Any) -> list[str]:
    """Where MLflow's trials table differs from the tuning job's (state or objective, by job); empty: none."""
    problems = []
    tuner = {row.job: row for row in from_tuner.itertuples()}
    seen = set()
    for row in from_mlflow.itertuples():
        seen.add(row.job)
        other = tuner.get(row.job)
        if other is None:
            problems.append(f"{row.job}: a run in MLflow, not a trial of the tuning job")
            continue
        if row.state != other.state:
            problems.append(f"{row.job}: {row.state} in MLflow, {other.state} in the tuning job")
        both = [v for v in (row.value, other.value) if v is not None and not math.isnan(v)]
        if len(both) == 1 or (len(both) == 2 and abs(both[0] - both[1]) > 1e-9):
            problems.append(f"{row.job}: objective {row.value} in MLflow, {other.value} in the tuning job")
    problems += [f"{job}: a trial of the tuning job with no MLflow run" for job in sorted(set(tuner) - seen)]
    return problems


def job_run(mlflow_client: Any, exp_id: str, job_name: str) -> Any | None:
    """The run a training job logged (found by its ``sagemaker.training_job_name`` tag), or None."""
    runs = mlflow_client.search_runs([exp_id], filter_string=f"tags.`{TAG_JOB}` = '{job_name}'", max_results=1)
    return runs[0] if runs else None


def epoch_curves(mlflow_client: Any, run_id: str,
                 keys: tuple[str, ...] = ("train_loss", "valid_loss", "train_accuracy", "valid_accuracy")) -> Any:
    """A run's per-epoch metrics as a DataFrame indexed by epoch (MLflow's ``step``)."""
    import pandas as pd

    series = {k: {m.step: m.value for m in mlflow_client.get_metric_history(run_id, k)} for k in keys}
    return pd.DataFrame(series).rename_axis("epoch").sort_index()


def log_to_job_run(mlflow_client: Any, run_id: str, files: Iterable[Path] = (), figures: Mapping[str, Any] = {},
                   tables: Mapping[str, Any] = {}, artifact_path: str = "analysis") -> list[str]:
    """What the notebook computed after the job (rule results, the profiler report, the confusion matrix) as
    artifacts of the job's run; returns the artifact paths."""
    logged = []
    for f in files:
        mlflow_client.log_artifact(run_id, str(f), artifact_path)
        logged.append(f"{artifact_path}/{Path(f).name}")
    for name, fig in figures.items():
        mlflow_client.log_figure(run_id, fig, f"{artifact_path}/{name}")
        logged.append(f"{artifact_path}/{name}")
    for name, data in tables.items():  # a DataFrame becomes its records
        rows = json.loads(data.to_json(orient="records")) if hasattr(data, "to_json") else data
        mlflow_client.log_dict(run_id, rows, f"{artifact_path}/{name}")
        logged.append(f"{artifact_path}/{name}")
    return logged


def ui_command(cfg: Any, port: int = 5000) -> str:
    """The command that opens the store in MLflow's UI (locally: run from the checkout, venv active), or where the
    managed UI is (on AWS). The work folder is shown relative to the checkout when it is inside it."""
    if cfg.backend == "sagemaker":
        return ("open the tracking server from SageMaker Studio (MLflow), or get a presigned URL: aws sagemaker "
                f"create-presigned-mlflow-tracking-server-url --tracking-server-name {cfg.mlflow_arn.rsplit('/', 1)[-1]}")
    work = Path(cfg.work_dir).resolve()
    shown = os.path.relpath(work, ROOT) if work.is_relative_to(ROOT) else str(work)
    return f"mlflow ui --backend-store-uri sqlite:///{shown}/{STORE_DIR}/mlflow.db --host 127.0.0.1 --port {port}"


# --------------------------------------------------------------------------------------------------
# MLflow's own UI, in a browser


UI_SHOT = "mlflow-ui.png"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def serve_ui(cfg: Any, timeout_s: float = 180.0) -> Iterator[str]:
    """``mlflow ui`` over the local store on a free loopback port, for as long as the block runs; its URL.

    It starts a process group (uvicorn, MLflow's job runner and its consumers), ended by its PID at the end.
    """
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = local_store(cfg.work_dir)[0]
    exe = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(exe), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow ui did not answer on {url} within {timeout_s:.0f} s "
                                   f"(exit code {proc.poll()})")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def ui_tuning_view(cfg: Any, parent_run_name: str, shot: Path, chromium: str = "/usr/bin/chromium",
                   columns: tuple[str, ...] = (OBJECTIVE,), browser: Any = None) -> list[str]:
    """Open the experiment in MLflow's UI in Chromium, expand the tuning job's parent run, show ``columns``,
    save a screenshot to ``shot``; returns the text of each row of the runs table, in order.

    ``browser``: a Playwright browser to open the page in (Playwright's sync API cannot be started twice in
    one thread); by default one is launched, and closed after.
    """
    with serve_ui(cfg) as url, contextlib.ExitStack() as stack:
        if browser is None:
            from playwright.sync_api import sync_playwright

            p = stack.enter_context(sync_playwright())
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            stack.callback(browser.close)
        exp = experiment_id(client(cfg), cfg)
        page = browser.new_page(viewport={"width": 1500, "height": 760})
        stack.callback(page.close)
        page.goto(f"{url}/#/experiments/{exp}/runs", wait_until="load")
        parent = page.locator("[role=gridcell]", has_text=parent_run_name).first
        parent.wait_for(timeout=90_000)
        parent.locator("button").first.click()  # expand: the trials are nested under it
        page.locator("[role=gridcell]", has_text=f"{parent_run_name}-").first.wait_for(timeout=30_000)
        for name in columns:
            page.get_by_role("button", name="Columns").click()
            page.locator("[role=dialog], [role=menu]").first.get_by_text(name, exact=True).click()
            page.keyboard.press("Escape")
        with contextlib.suppress(Exception):  # the assistant panel takes a third of the page
            page.get_by_role("button", name="Close").first.click(timeout=2000)
        page.wait_for_timeout(800)
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
        cells = page.eval_on_selector_all(  # ag-grid splits each row into a pinned and a scrolling part
            ".ag-pinned-left-cols-container [role=row], .ag-center-cols-container [role=row]",
            "els => els.map(e => [e.getAttribute('row-index'), e.innerText.replace(/\\s+/g, ' ').trim()])")
    rows: dict[int, str] = {}
    for index, text in cells:
        rows[int(index)] = f"{rows[int(index)]} | {text}" if int(index) in rows else text
    return [rows[i] for i in sorted(rows)]


def latest_tuning_run(mlflow_client: Any, exp_id: str) -> Any | None:
    """The most recent tuning job's parent run in the experiment, or None."""
    runs = mlflow_client.search_runs([exp_id], filter_string="tags.`sagebook.kind` = 'tuning'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def book_screenshot(cfg: Any, dest: Path) -> str:
    """``dest``: MLflow's UI showing the latest tuning job and its trials, for the book; a placeholder that says
    why when it cannot be taken (no Chromium or Playwright, no tuning run). Returns what it did, in a line."""
    reason = None
    try:
        if cfg.backend != "local":
            reason = "the runs are on the SageMaker tracking server; open its UI from SageMaker Studio"
        else:
            mlflow_client = client(cfg)
            parent = latest_tuning_run(mlflow_client, experiment_id(mlflow_client, cfg))
            if parent is None:
                reason = "no tuning job is tracked yet: run chapter 2"
            else:
                rows = ui_tuning_view(cfg, parent.info.run_name, dest)
                return f"MLflow UI: {len(rows)} rows (the tuning job's parent run and its trials) -> {dest.name}"
    except Exception as e:  # noqa: BLE001 - the book builds without it, and says why
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (1500, 120), "white")
    ImageDraw.Draw(img).text((20, 40), f"No screenshot of MLflow's UI in this build ({reason}). Open it with: "
                             f"{ui_command(cfg)}", fill="black")
    dest.parent.mkdir(parents=True, exist_ok=True)
    img.save(dest)
    return f"MLflow UI: no screenshot ({reason}); a placeholder says so"
