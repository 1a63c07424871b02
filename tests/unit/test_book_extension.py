"""The book's Sphinx extension: the footer's claim only on the pages the run computed."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "sagebook_sphinx", Path(__file__).resolve().parents[2] / "book" / "_ext" / "sagebook_sphinx.py")
ext = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ext)


def test_the_footer_claims_computed_numbers_on_the_chapters_only():
    assert ext.footer("book/01_data") == ext.footer("book/05_lambda_autoscaling") == ext.COMPUTED
    assert "reference runs" in ext.footer("book/06_performance")
    for written in ("book/intro", "book/guides/sagemaker", "book/appendix", "book/reference", "genindex", "search"):
        assert ext.footer(written) == ""


def test_the_page_context_gets_the_footer():
    context = {}
    ext._footer(None, "book/guides/own_data", "page.html", context, None)
    assert context["theme_extra_footer"] == ""
    ext._footer(None, "book/02_hpo", "page.html", context, None)
    assert context["theme_extra_footer"] == ext.COMPUTED
