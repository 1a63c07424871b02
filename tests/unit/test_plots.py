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
