"""Small Sphinx fixes for the book (loaded through _config.yml's ``local_extensions``)."""

import re

#: The footer's claim, on the pages where it holds: the executed chapters, not the hand-written guides.
COMPUTED = "Every number and insight on this page was computed by the run that built it."
FOOTERS = {"book/06_performance": "The numbers on this page are the reference runs kept in book/results/; the "
                                  "chapter times were measured by the run that built it."}


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    """sphinx-thebe adds its inline configuration script twice, which the browser reports as an error
    ("Identifier 'THEBE_JS_URL' has already been declared"); keep the first of identical scripts."""
    seen, kept = set(), []
    for js in context.get("script_files", []):
        attrs = getattr(js, "attributes", {}) or {}
        key = (str(getattr(js, "filename", js) or ""), tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    context["script_files"] = kept


def footer(pagename: str) -> str:
    """What the page's footer says: the run computed its numbers (a chapter), or nothing (a written page)."""
    return FOOTERS.get(pagename) or (COMPUTED if re.fullmatch(r"book/0[1-9]_\w+", pagename) else "")


def _footer(app, pagename, templatename, context, doctree):
    context["theme_extra_footer"] = footer(pagename)


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)  # after sphinx-thebe adds its script
    app.connect("html-page-context", _footer)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
