"""Small Sphinx fixes for the book (loaded through _config.yml's ``local_extensions``)."""


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


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)  # after sphinx-thebe adds its script
    return {"parallel_read_safe": True, "parallel_write_safe": True}
