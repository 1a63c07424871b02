"""The chapter notebooks: committed clean, parameterised alike, executable with papermill."""

import json
from pathlib import Path

import nbformat
import papermill
import pytest

from helpers import book, cleanup, session, tracking
from helpers.config import ConfigError, RunConfig
from helpers.ledger import Ledger
from helpers.manifest import Manifest, ManifestError

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = book.chapters(ROOT / "notebooks")


@pytest.fixture(autouse=True)
def _stop_the_local_sagemaker(tmp_path, monkeypatch):
    """Each test's run works in its own folder (never the checkout's .work, whose run the cleanup would end), and a
    chapter starts the run's local SageMaker in the background: end the one of each test's work folder."""
    import os

    monkeypatch.setenv("SAGEBOOK_WORK_DIR", str(tmp_path / "work"))
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    yield
    for k in [k for k in os.environ if k.startswith("AWS_")]:  # session.connect points this process at the
        if k not in aws:                                          # test's local SageMaker: undo that
            del os.environ[k]
    os.environ.update(aws)
    from helpers.emulator import background

    background.stop(tmp_path / "work")


def insights(outputs) -> str:
    """The chapter's computed insights: a Markdown list (it wraps in the page), not printed lines."""
    lists = ["".join(o.get("data", {}).get("text/markdown", "")) for o in outputs]
    found = [md for md in lists if md.startswith("- ")]
    assert found, "no insight list in the chapter's outputs"
    return "\n".join(found)


def assert_no_work_path(outputs, work: Path) -> None:
    """The page shows paths relative to the work folder: its absolute path (a temp or home folder) is noise."""
    shown = "".join(o.get("text", "") + "".join("".join(v) for k, v in o.get("data", {}).items()
                                                 if k.startswith("text/")) for o in outputs)
    assert str(work) not in shown and str(work.resolve()) not in shown


def test_the_chapters_exist():
    assert [nb.stem for nb in CHAPTERS] == [
        "01_data", "02_hpo", "03_debug_profile", "04_deploy", "05_lambda_autoscaling", "06_performance"]


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_committed_notebooks_carry_no_outputs(nb):
    notebook = nbformat.read(str(nb), as_version=4)
    dirty = [i for i, c in enumerate(notebook.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert dirty == [], f"{nb.name}: strip the outputs of cells {dirty} (make strip)"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_parameters_cell_declares_the_run_config_with_its_defaults(nb):
    declared = papermill.inspect_notebook(str(nb))
    defaults = RunConfig.__dataclass_fields__
    for name in RunConfig.field_names():
        assert name in declared, f"{nb.name} lacks parameter {name}"
        if name != "work_dir":
            assert json.loads(declared[name]["default"].replace("'", '"')) == defaults[name].default, name


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter_without_a_warning(nb, caplog):
    """A second ``=`` on a line (in its comment, say) makes papermill skip the parameter and log a warning."""
    import ast

    cell = next(c for c in nbformat.read(str(nb), as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    names = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets}
    with caplog.at_level("WARNING", logger="papermill"):
        declared = papermill.inspect_notebook(str(nb))
    assert set(declared) == names and not caplog.records, [r.getMessage() for r in caplog.records]


@pytest.mark.slow
def test_chapter_01_runs_with_the_synthetic_dataset(tmp_path):
    out = tmp_path / "01_data.ipynb"
    work = tmp_path / "work"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "01_data.ipynb"), str(out), cwd=str(ROOT / "notebooks"), progress_bar=False,
        parameters={"dataset": "synthetic", "work_dir": str(work), "synthetic_classes": 3, "synthetic_images": 10},
    )
    rec = Manifest.load(work).require("data", dataset="synthetic")
    assert rec["class_names"] == ["Affenpinscher", "Afghan hound", "Airedale terrier"]
    assert rec["counts"] == {"train": 18, "valid": 6, "test": 6}
    executed = nbformat.read(str(out), as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # counts, samples: one size, no size plot
    assert "there is no size distribution to plot" in insights(outputs)
    assert "- Every train class has 6 images" in insights(outputs)
    assert_no_work_path(outputs, work)
    assert not [o for o in outputs if o.output_type == "error"]


def write_chapter(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('dataset = "digits"\nbackbone = "resnet18"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# t"), params] + [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


@pytest.mark.slow
def test_a_failing_chapter_stops_the_run_and_names_chapter_and_cell(tmp_path):
    src = tmp_path / "notebooks"
    src.mkdir()
    write_chapter(src / "01_ok.ipynb", "x = 1")
    write_chapter(src / "02_broken.ipynb", "y = 2", "raise ValueError('the data went missing')")
    write_chapter(src / "03_never.ipynb", "z = 3")
    with pytest.raises(book.BookError) as e:
        book.run({}, notebooks=src, out_dir=tmp_path / "book", do_build=False)
    msg = str(e.value)
    assert "Chapter 02_broken failed" in msg and "code cell 3" in msg and "the data went missing" in msg
    assert (tmp_path / "book" / "01_ok.ipynb").exists() and not (tmp_path / "book" / "03_never.ipynb").exists()


@pytest.mark.slow
def test_a_chapters_kernel_prints_no_transport_warning_and_leaves_no_socket(tmp_path, capfd):
    """The kernel talks over Unix sockets: ipykernel's "running over TCP without encryption" warning, which it
    writes straight to the runner's stderr, never appears, and the sockets are gone afterwards."""
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("sagebook-kernel-*"))
    (tmp_path / "book").mkdir()
    run = book.run_chapter(write_chapter(tmp_path / "01_one.ipynb", "print('ran')"), {}, tmp_path / "book")
    assert run.name == "01_one"
    out, err = capfd.readouterr()
    assert "TCP" not in out + err and "encryption" not in out + err
    executed = nbformat.read(str(tmp_path / "book" / "01_one.ipynb"), as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "ran\n"
    assert set(Path(tempfile.gettempdir()).glob("sagebook-kernel-*")) == before


@pytest.mark.slow
def test_a_chapters_kernel_is_stopped_when_its_last_cell_ends_not_waited_for(tmp_path):
    """A chapter's time ends with its last cell: its kernel is stopped at once, not given seconds to tear its
    interpreter down (torch, the SDK and MLflow took up to 2.6 s). Waited for, this kernel's exit would write its
    marker one second after the last cell."""
    import time

    (tmp_path / "book").mkdir()
    marker = tmp_path / "exited"
    slow_exit = (f"import atexit, pathlib, time\natexit.register(lambda: (time.sleep(1), "
                 f"pathlib.Path({str(marker)!r}).write_text('slow exit')))\nprint('ran')")
    book.run_chapter(write_chapter(tmp_path / "01_one.ipynb", slow_exit), {}, tmp_path / "book")
    time.sleep(1.5)  # were the kernel still exiting, its marker would be there by now
    assert not marker.exists()
    executed = nbformat.read(str(tmp_path / "book" / "01_one.ipynb"), as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "ran\n"


@pytest.mark.reliability
@pytest.mark.slow
def test_a_failing_cleanup_never_hides_the_chapters_error(tmp_path, monkeypatch, capsys):
    """The chapter's error is raised, and the cleanup's own failure is reported beside it; alone, it is the error."""
    src = tmp_path / "notebooks"
    src.mkdir()
    write_chapter(src / "01_broken.ipynb", "raise ValueError('the data went missing')")

    def broken_teardown(params, keep_endpoint=False):
        raise ManifestError("The run manifest is unreadable")

    monkeypatch.setattr(book, "teardown", broken_teardown)
    with pytest.raises(book.BookError, match="the data went missing"):
        book.run({}, notebooks=src, out_dir=tmp_path / "book", do_build=False)
    assert "The cleanup failed: The run manifest is unreadable" in capsys.readouterr().err
    write_chapter(src / "01_broken.ipynb", "x = 1")
    with pytest.raises(book.BookError, match="The cleanup failed: The run manifest is unreadable"):
        book.run({}, notebooks=src, out_dir=tmp_path / "book", do_build=False)


def test_unknown_parameter_is_refused_before_running(tmp_path):
    src = tmp_path / "notebooks"
    src.mkdir()
    write_chapter(src / "01_ok.ipynb", "x = 1")
    with pytest.raises(book.BookError, match="Unknown parameter.*learning_rate.*the chapters take: backbone, dataset"):
        book.run({"learning_rate": 0.1}, notebooks=src, out_dir=tmp_path / "book", do_build=False)
    with pytest.raises(ConfigError, match="resnet50"):
        book.run({"backbone": "resnet500"}, notebooks=src, out_dir=tmp_path / "book", do_build=False)
    assert not (tmp_path / "book").exists()


def test_cli_reports_errors_without_a_traceback(capsys):
    assert book.main(["--backbone", "alexnet9000", "--no-build"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid run configuration") and "Traceback" not in err
    assert book.main(["--only", "09", "--no-build"]) == 1
    assert "No chapter numbered 09" in capsys.readouterr().err


@pytest.mark.parametrize("text, value", [("3", 3), ("0.5", 0.5), ("True", True), ("resnet50", "resnet50"),
                                         ("s3://b/p", "s3://b/p"), ("'7'", "7")])
def test_parse_value(text, value):
    assert book.parse_value(text) == value


@pytest.mark.slow
def test_only_runs_the_selected_chapters_and_stubs_the_rest(tmp_path):
    src = tmp_path / "notebooks"
    src.mkdir()
    write_chapter(src / "01_one.ipynb", "import os\nprint('progress', os.environ.get('SAGEBOOK_PROGRESS'))")
    write_chapter(src / "02_two.ipynb", "raise RuntimeError('must not run')")
    runs, index = book.run({}, ["01"], notebooks=src, out_dir=tmp_path / "book", do_build=False)
    assert [r.name for r in runs] == ["01_one"] and index is None
    one = nbformat.read(str(tmp_path / "book" / "01_one.ipynb"), as_version=4)
    assert "progress 0" in one.cells[-1].outputs[0]["text"]  # kernels run with progress bars off
    stub = nbformat.read(str(tmp_path / "book" / "02_two.ipynb"), as_version=4)
    assert "has not been executed yet" in stub.cells[1].source
    assert all(not c.get("outputs") for c in stub.cells if c.cell_type == "code")


def execute(name: str, out_dir: Path, **parameters):
    return papermill.execute_notebook(
        str(ROOT / "notebooks" / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb"), cwd=str(ROOT / "notebooks"),
        progress_bar=False, parameters=parameters)


@pytest.mark.slow
def test_chapter_02_before_01_names_the_chapter_to_run(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="run chapter 01_data first"):
        execute("02_hpo", tmp_path, work_dir=str(tmp_path / "work"), dataset="synthetic")


@pytest.mark.slow
def test_chapter_02_tunes_another_backbone(tmp_path):
    common = {"work_dir": str(tmp_path / "work"), "dataset": "synthetic", "synthetic_classes": 3,
              "synthetic_images": 10}
    execute("01_data", tmp_path, **common)
    nb = execute("02_hpo", tmp_path, **common, backbone="mobilenet_v3_small", weights="none", n_trials=4,
                 compare_starts=False)  # torchvision's weights need a download
    rec = Manifest.load(tmp_path / "work").require("hpo", backbone="mobilenet_v3_small")
    assert set(rec["hyperparameters"]) == {"lr", "batch_size", "epochs"} and rec["trials"] == 4
    assert rec["objective"]["metric"] == "valid:accuracy"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3  # history, by parameter, parallel coordinates
    text = "".join(o.get("text", "") for o in outputs)
    assert "The best of 4 trials reached valid:accuracy" in insights(outputs)
    assert_no_work_path(outputs, tmp_path / "work")
    assert "with 4 child runs; every state and objective agrees with the tuning job." in text
    # The store: a parent run per tuning job, a child run per trial with its epochs and system metrics
    cfg = RunConfig(work_dir=str(tmp_path / "work"), dataset="synthetic")
    client = tracking.client(cfg)
    exp = tracking.experiment_id(client, cfg)
    parents = client.search_runs([exp], filter_string="tags.`sagebook.kind` = 'tuning'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trials = tracking.trial_runs(client, exp, parents[0].info.run_id, ("lr", "batch_size", "epochs"))
    assert len(trials) == 4 and set(trials.state) <= {"COMPLETE", "PRUNED"}
    done = trials[trials.state == "COMPLETE"]
    assert (done.epochs_run == done.epochs).all() and (trials.system_metrics > 0).all()
    assert ": Completed, Starting -> Downloading -> Training -> Uploading -> Completed" in text  # the best trial


@pytest.mark.slow
def test_chapter_03_without_best_hyperparameters_names_chapter_02(tmp_path):
    common = {"work_dir": str(tmp_path / "work"), "dataset": "synthetic", "synthetic_classes": 3,
              "synthetic_images": 10}
    execute("01_data", tmp_path, **common)
    with pytest.raises(papermill.PapermillExecutionError, match="run chapter 02_hpo first, or pass hyperparameters"):
        execute("03_debug_profile", tmp_path, **common)


@pytest.mark.slow
def test_chapter_03_trains_under_debugger_and_profiler(tmp_path, monkeypatch):
    monkeypatch.setenv(book.BOOK_DIR_ENV, str(tmp_path / "book"))  # as `make book` runs it: reports are published
    common = {"work_dir": str(tmp_path / "work"), "dataset": "synthetic", "synthetic_classes": 3,
              "synthetic_images": 10}
    execute("01_data", tmp_path, **common)
    nb = execute("03_debug_profile", tmp_path, **common, train_save_interval=1,
                 hyperparameters={"lr": 0.01, "batch_size": 8, "epochs": 2, "image_size": 32})
    rec = Manifest.load(tmp_path / "work").require("model", dataset="synthetic")
    model_dir = Path(rec["model_dir"])
    assert (model_dir / "model.pth").is_file() and (model_dir / "code" / "inference.py").is_file()
    assert Path(rec["profiler_report"]).read_text().count("data:image/png;base64,") >= 2
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 5  # loss, gradients, weights, steps, confusion
    text = "".join(o.get("text", "") for o in outputs)
    assert "Test accuracy" in insights(outputs) and "The data loader used" in insights(outputs)
    assert_no_work_path(outputs, tmp_path / "work")
    assert list((tmp_path / "book").rglob("*-profiler-report.html"))  # the page links the published copy
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    for rule in ("vanishing_gradient", "class_imbalance", "LowGPUUtilization", "MaxInitializationTime"):
        assert rule in html
    assert "INFO" not in text and "WARNING" not in text  # smdebug's chatter stays out of the book
    assert not [o for o in outputs if o.get("name") == "stderr"]  # nor MLflow's, nor a warning
    # The job's MLflow run: its epochs, system metrics, final numbers, and what the chapter added
    cfg = RunConfig(work_dir=str(tmp_path / "work"), dataset="synthetic")
    client = tracking.client(cfg)
    exp = tracking.experiment_id(client, cfg)
    run = tracking.job_run(client, exp, rec["job"])
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.01"
    # the chapter made the experiment before the job: its artifacts live in the store's folder, not the job's
    assert client.get_experiment(exp).artifact_location == (tmp_path / "work" / "mlflow" / "artifacts").as_uri()
    assert list(tracking.epoch_curves(client, run.info.run_id).index) == [1, 2]
    assert run.data.metrics["test_accuracy"] == pytest.approx(rec["test_accuracy"], abs=1e-6)
    assert any(k.startswith("system/cpu") for k in run.data.metrics)
    assert run.data.tags["sagemaker.training_job_url"].endswith(f"#/jobs/{rec['job']}")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "analysis")}
    assert {"analysis/confusion_matrix.png", "analysis/debugger_rules.json", "analysis/profiler_rules.json",
            f"analysis/{Path(rec['profiler_report']).name}"} <= artifacts
    assert {"model_config.json", "metrics.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    # TensorBoard: event files and the profiler trace, uploaded from TensorBoardOutputConfig's LocalPath
    tb = tmp_path / "work" / "jobs" / rec["job"] / "tensorboard"
    assert list(tb.glob("events.out.tfevents.*")) and list(tb.glob("*.pt.trace.json"))
    assert "1 event file(s) and 1 profiler trace(s)" in text


def test_publish_puts_reports_where_the_build_copies_them(tmp_path, monkeypatch):
    report = tmp_path / "r.html"
    report.write_text("<html></html>")
    monkeypatch.delenv(book.BOOK_DIR_ENV, raising=False)
    assert book.publish(report) == str(report)
    monkeypatch.setenv(book.BOOK_DIR_ENV, str(tmp_path / "book"))
    assert book.publish(report, "job-report.html") == "../_assets/job-report.html"
    assert (tmp_path / "book" / "_extra" / "_assets" / "job-report.html").read_text() == "<html></html>"
    assert "book/_extra" in (ROOT / "_config.yml").read_text()  # html_extra_path: copied to _build/html/


@pytest.mark.slow
def test_chapters_04_and_05_deploy_call_and_clean_up(tmp_path, request):
    import psutil

    from helpers.emulator import background

    request.addfinalizer(lambda: background.stop(tmp_path / "work"))  # also when an assertion fails
    common = {"work_dir": str(tmp_path / "work"), "dataset": "synthetic", "synthetic_classes": 3,
              "synthetic_images": 10}
    execute("01_data", tmp_path, **common)
    server = background.running(tmp_path / "work")
    assert server is not None  # chapter 1 started the run's local SageMaker; the next chapters find it
    execute("02_hpo", tmp_path, **common, n_trials=2, max_parallel_trials=2,
            compare_starts=False)  # the book's build renders the comparison (tests/book)
    execute("03_debug_profile", tmp_path, **common,
            hyperparameters={"lr": 0.01, "batch_size": 8, "epochs": 1, "image_size": 32})
    nb = execute("04_deploy", tmp_path, **common, n_requests=6)
    assert background.running(tmp_path / "work") == server
    rec = Manifest.load(tmp_path / "work").require("endpoint")
    assert rec["backend"] == "local" and rec["region"] == "us-east-1"  # kept for chapter 5
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
    text = "".join(o.get("text", "") for o in outputs)
    assert "HTTP 200 | ContentType: application/json" in text and "6 requests: p50" in text
    assert "CustomAttributes: replica=" in text and "ray:serve-ml-sagemaker-cpu-v1" in text  # served by Ray Serve
    shown = "".join(o.get("data", {}).get("text/plain", "") for o in outputs)  # tables: execute results
    assert "The ray-serve container took" in insights(outputs) and "import_path: \"deployment:app\"" in text
    assert "95% interval" in insights(outputs)  # the requests' accuracy against the split's, with its noise
    assert "read by" in shown and "Ray Serve: `serve run config.yaml`" in shown  # which container reads what
    # chapter 5 calls the endpoint through the Lambda function, load-tests it, simulates; the runner cleans up
    nb5 = execute("05_lambda_autoscaling", tmp_path, **common, concurrency=[1, 2], requests_per_level=6,
                  max_seconds=5, replica_steps=[[1, 1], [8, 3]], cleanup=False)
    outputs5 = [o for c in nb5.cells if c.cell_type == "code" for o in c.outputs]
    text5 = "".join(o.get("text", "") for o in outputs5) + insights(outputs5)
    assert_no_work_path(outputs + outputs5, tmp_path / "work")
    assert "test event -> 200" in text5 and "bad event -> 400" in text5 and "Simulation, policy" in text5
    assert "function URL -> 200" in text5
    assert sum("image/png" in o.get("data", {}) for c in nb5.cells if c.cell_type == "code" for o in c.outputs) == 4
    assert "requests per forward pass on average at 8 clients" in text5  # measured on the Ray Serve endpoint
    # the ledger knows all the run created; the cleanup removes it, and the local SageMaker finds none of it
    cfg = RunConfig(**common)
    kinds = {r.kind for r in Ledger(cfg.work_path).entries()}
    assert kinds >= {"training job", "tuning job", "model", "endpoint config", "endpoint", "scalable target",
                     "scaling policy", "function", "function url", "role", "role policy", "s3 folder"}, kinds
    report = cleanup.clean(cfg, stop_local=False)
    assert report.left == [] and report.errors == [], str(report)
    assert f"endpoint {rec['name']}" in report.removed
    assert_nothing_of_the_run_is_left(session.connect(cfg), cfg)
    assert cleanup.clean(cfg, stop_local=False).removed == []  # a second cleanup has nothing to do
    removed = book.teardown(common)
    assert removed == ["the local SageMaker"]
    assert Manifest.load(tmp_path / "work").get("endpoint") is None
    assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == "zombie"
    assert background.running(tmp_path / "work") is None


@pytest.mark.reliability
@pytest.mark.slow
def test_a_run_that_crashed_after_chapter_4_leaves_nothing_after_the_next(tmp_path):
    """The next run starts from chapter 01, whose record drops the endpoint stage: the ledger still knows the
    endpoint, and the next cleanup removes it and stops the old local SageMaker."""
    import psutil

    from helpers.emulator import background
    from helpers.ledger import Ledger

    common = {"work_dir": str(tmp_path / "work"), "dataset": "synthetic", "synthetic_classes": 3,
              "synthetic_images": 10}
    execute("01_data", tmp_path, **common)
    execute("03_debug_profile", tmp_path, **common,
            hyperparameters={"lr": 0.01, "batch_size": 8, "epochs": 1, "image_size": 32})
    execute("04_deploy", tmp_path, **common, n_requests=2)
    name = Manifest.load(tmp_path / "work").require("endpoint")["name"]
    server = background.running(tmp_path / "work")  # the run "crashes" here: no cleanup ran
    execute("01_data", tmp_path, **common)  # a new run
    assert Manifest.load(tmp_path / "work").get("endpoint") is None  # the stage went with the new data record
    assert ("endpoint", name) in {(r.kind, r.name) for r in Ledger(tmp_path / "work").entries()}  # the ledger knows
    removed = book.teardown(common)
    assert f"endpoint {name}" in removed and "the local SageMaker" in removed
    assert Ledger(tmp_path / "work").entries() == []  # nothing recorded is left
    assert background.running(tmp_path / "work") is None
    assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == "zombie"


def assert_nothing_of_the_run_is_left(boto_session, cfg):
    """What a reader would list in the console after a cleanup: nothing of this run's."""
    sm, s3 = boto_session.client("sagemaker"), boto_session.client("s3")
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == []
    assert boto_session.client("lambda").list_functions()["Functions"] == []
    roles = [r["RoleName"] for r in boto_session.client("iam").list_roles()["Roles"]]
    assert not [r for r in roles if r.startswith(("sagebook", "SageBook"))], roles
    aas = boto_session.client("application-autoscaling")
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []
    groups = [g["logGroupName"] for g in boto_session.client("logs").describe_log_groups()["logGroups"]]
    assert not [g for g in groups if g.startswith("/aws/lambda/")], groups
    streams = boto_session.client("logs").describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs")
    assert streams["logStreams"] == []
    bucket, _, prefix = cfg.s3_prefix.removeprefix("s3://").partition("/")
    left = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    assert left == [], [o["Key"] for o in left][:20]

@pytest.mark.parametrize("nb", CHAPTERS[:5], ids=lambda p: p.stem)
def test_every_aws_call_goes_through_the_runs_session(nb):
    """One code path, one region: the chapters make their clients from ``session.connect(cfg)``'s session,
    never ``boto3.client(...)`` (which would use the default region and, locally, miss the local SageMaker), and
    never branch on the backend around a call."""
    code = "\n".join(c.source for c in nbformat.read(str(nb), as_version=4).cells if c.cell_type == "code")
    assert "boto3.client(" not in code and "boto3.Session(" not in code
    assert "cfg.backend ==" not in code and "backend ==" not in code
    if nb.stem != "01_data" or "client(" in code:
        assert "session.connect(cfg)" in code
