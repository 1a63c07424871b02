"""The API reference page documents every module of ``helpers`` (a new module must not go missing from it)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: modules that are entry points or aliases, not APIs
NOT_AN_API = {"helpers.train", "helpers.emulator.__main__", "helpers.emulator.ray_container"}


def test_every_module_is_on_the_reference_page():
    documented = set(re.findall(r"\.\. automodule:: (\S+)", (ROOT / "book" / "reference.md").read_text()))
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "helpers").rglob("*.py")
               if p.name != "__init__.py" or p.parent.name == "emulator"}
    modules = {m.removesuffix(".__init__") for m in modules} - NOT_AN_API
    assert modules - documented == set()
