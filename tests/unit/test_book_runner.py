"""The book runner's post-processing of an executed chapter."""

import nbformat

from helpers import book

EMPTY_RICH = {"text/html": '<pre style="white-space:pre;overflow-x:auto"></pre>\n', "text/plain": ""}


def test_displays_that_show_nothing_are_dropped_and_the_rest_kept(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("job.wait(poll=1)")
    cell.outputs = [nbformat.v4.new_output("display_data", data=EMPTY_RICH),
                    nbformat.v4.new_output("stream", name="stdout", text="job done\n"),
                    nbformat.v4.new_output("display_data", data={"text/html": "<pre>1 trial</pre>", "text/plain": "1"}),
                    nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": ""})]
    nb.cells = [cell]
    path = tmp_path / "chapter.ipynb"
    nbformat.write(nb, str(path))
    assert book.drop_empty_outputs(path) == 1
    kept = nbformat.read(str(path), as_version=4).cells[0].outputs
    assert [o.output_type for o in kept] == ["stream", "display_data", "display_data"]
    assert book.drop_empty_outputs(path) == 0
