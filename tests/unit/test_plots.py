"""Figures whose text the book's column shows at 10 px or more."""

from matplotlib.figure import Figure
from PIL import Image

from helpers import plots


def test_rendered_text_accounts_for_the_columns_scaling():
    wide = Figure(figsize=(13.6, 3))
    wide.subplots().set_title("label", fontsize=8)
    assert plots.rendered_text_px(wide) < 6  # 8 pt on a 1360 px image shown 624 px wide
    narrow = Figure(figsize=(6, 3))
    narrow.subplots().set_title("label", fontsize=8)
    assert plots.rendered_text_px(narrow) == 8 * 100 / 72  # narrower than the column: not scaled


def test_the_prediction_gallery_labels_are_readable_in_the_book():
    images = [Image.new("RGB", (64, 64), (i * 20, 0, 0)) for i in range(10)]
    top = [[{"label": "Affenpinscher", "probability": 0.7}, {"label": "Airedale terrier", "probability": 0.2},
            {"label": "Akita", "probability": 0.1}]] * 10
    fig = plots.prediction_gallery(images, top, ["Affenpinscher"] * 9 + ["Akita"], title="One per class")
    assert plots.rendered_text_px(fig) >= 10
    assert sum(len(ax.images) > 0 for ax in fig.axes) == 10  # every class, not the first 8


def _every_figure(synthetic_root):
    """Each figure function of the chapters, on small inputs shaped like the chapters' own."""
    import numpy as np
    import pandas as pd

    from helpers import autoscaling, data
    from helpers.serverless import ScalingPolicy

    report = data.validate_dataset(synthetic_root, progress=False)
    report.widths[0] += 10  # two sizes: the size plot has something to show
    trials = pd.DataFrame({"number": range(6), "state": ["COMPLETE"] * 5 + ["PRUNED"],
                           "value": np.linspace(.5, .9, 6), "lr": np.logspace(-4, -1, 6), "batch_size": [32, 64] * 3,
                           "epochs": [2, 3] * 3})
    curves = pd.DataFrame({"train_loss": [1.0, 0.6], "valid_loss": [0.9, 0.7]}, index=[1, 2])
    steps = {"train": ([0, 10, 20], [1.0, 0.8, 0.6]), "valid": ([25, 26, 27], [0.9, 0.8, 0.85])}
    samples = [{"t": float(i), "cpu": [50.0, 40.0], "mem_percent": 30.0, "disk_read_bps": 0.0, "disk_write_bps": 1e6}
               for i in range(5)]
    step_rows = [{"step": i, "data_s": 0.01, "compute_s": 0.1} for i in range(20)]
    rows = autoscaling.load_test(lambda: True, concurrency=(1, 2), requests=4, max_seconds=2)
    sims = [autoscaling.simulate([30] * 5 + [150] * 10, ScalingPolicy(name=n, target_invocations_per_instance=60),
                                 3.0, 20, objective_ms=60) for n in ("a", "b")]
    timeline = pd.DataFrame({"clients": [1, 16, 16, 2], "replicas": [1, 1, 2, 1], "req_per_s": [30, 50, 55, 20],
                             "p50_ms": [20, 40, 35, 20], "p99_ms": [30, 90, 70, 25], "mean_batch": [1, 4, 3, 1],
                             "errors": [0] * 4}, index=[0.0, 2.0, 4.0, 6.0])
    names = [f"{i:03d}.Class_{i}" for i in range(10)]
    return {
        "class_counts": plots.class_counts(report), "sample_grid": plots.sample_grid(report),
        "size_distribution": plots.size_distribution(report), "tuning_history": plots.tuning_history(trials),
        "tuning_parameters": plots.tuning_parameters(trials),
        "parallel_coordinates": plots.parallel_coordinates(trials),
        "epochs_and_steps": plots.epochs_and_steps(curves, steps), "system_usage": plots.system_usage(samples),
        "step_times": plots.step_times(step_rows), "loss_per_step": plots.loss_per_step(steps),
        "gradient_norms": plots.gradient_norms({"TransferModel_head.weight": ([0, 10], [0.1, 0.05])}),
        "weight_distributions": plots.weight_distributions({"TransferModel_head.weight": (
            np.random.default_rng(0).normal(size=500), np.random.default_rng(1).normal(size=500), 0, 300)}),
        "confusion_matrix": plots.confusion_matrix(np.eye(10, dtype=int) * 5, names),
        "load_test": plots.load_test({"direct": rows}),
        "starts": plots.starts(pd.DataFrame(
            {"valid accuracy": [0.8, 0.93, 0.97], "seconds": [5, 6, 39]},
            index=["random, frozen", "pretrained, frozen", "pretrained, all layers tuned"])),
        "simulation": plots.simulation(sims, "a spike"),
        "replica_scaling": plots.replica_scaling(timeline),
        **_appendix_figures(),
    }


def _appendix_figures():
    """The performance appendix's figures, of the committed reference runs (and chapter times like a build's)."""
    import pandas as pd

    from helpers import bench

    runs = bench.reference_runs()
    assert runs, "no reference run in book/results"
    serving = bench.runs_table(runs, "serving")
    times = pd.DataFrame({"chapter": [f"0{i}_chapter" for i in range(1, 7)], "seconds": [20, 50, 70, 40, 70, 5]})
    return {"reference_training": plots.reference_training(bench.runs_table(runs, "training")),
            **{f"reference_serving {name}": plots.reference_serving(rows, name)
               for name, rows in serving.groupby("run", sort=False)},
            "chapter_times": plots.chapter_times(times)}


def test_every_figure_of_the_chapters_has_text_of_10_px_or_more(synthetic_root):
    figures = _every_figure(synthetic_root)
    small = {name: round(plots.rendered_text_px(fig), 1) for name, fig in figures.items()
             if plots.rendered_text_px(fig) < plots.MIN_TEXT_PX}
    assert not small, small


def test_the_chapters_draw_no_figure_of_their_own():
    """Only :mod:`helpers.plots` makes its figures readable in the book (``for_the_book``): a figure a chapter's
    cell draws itself escapes that (the appendix's serving figure had 7 px legends)."""
    import json
    import re

    from helpers.book import ROOT

    drawn = re.compile(r"\bFigure\(|\bplt\.|\.subplots\(")
    cells = [(nb.stem, i) for nb in sorted((ROOT / "notebooks").glob("*.ipynb"))
             for i, cell in enumerate(json.loads(nb.read_text())["cells"])
             if cell["cell_type"] == "code" and drawn.search("".join(cell["source"]))]
    assert not cells, cells


def test_a_dataset_of_one_image_size_has_no_size_plot(synthetic_root):
    from helpers import data

    report = data.validate_dataset(synthetic_root, progress=False)
    report.widths[:] = [64] * len(report.widths)
    report.heights[:] = [64] * len(report.heights)
    assert plots.size_distribution(report) is None


def test_the_first_weight_histogram_is_drawn_over_the_last():
    import numpy as np

    same = np.random.default_rng(0).normal(size=500)
    fig = plots.weight_distributions({"w": (same, same, 0, 300)})
    ax = fig.axes[0]
    first = [p for p in ax.patches if p.get_label() == "step 0" or p.get_fill() is False]
    assert first and all(not p.get_fill() for p in first)  # an outline: visible even on identical histograms
    assert max(p.get_zorder() for p in first) > max(p.get_zorder() for p in ax.patches if p.get_fill())


def test_throughput_axes_start_at_zero():
    from helpers import autoscaling

    rows = [{"concurrency": c, "req_per_s": r, "p50_ms": 20.0, "p95_ms": 30.0} for c, r in ((1, 58), (4, 61))]
    fig = plots.load_test({"direct": rows})
    assert fig.axes[0].get_ylim()[0] == 0 and autoscaling
