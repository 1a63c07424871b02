"""Everything the README tells people to run, run."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMANDS = [line.strip() for block in re.findall(r"```bash\n(.*?)```", README, re.S) for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_the_readme_opens_with_the_two_commands():
    assert [c.split("#")[0].strip() for c in COMMANDS[:2]] == ["make book", "make test"]  # run by .ci/run itself
    for target in ("book", "test"):
        assert f"make {target}" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("command", [c for c in COMMANDS if "helpers.book" in c])
def test_book_commands_are_valid(command):
    argv = shlex.split(command)
    assert argv[0] == ".venv/bin/python"
    proc = subprocess.run([sys.executable, *argv[1:], "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "would run 01_data" in proc.stdout


def test_the_benchmark_command_is_the_tested_one():
    bench = [c for c in COMMANDS if "helpers.bench" in c]
    assert bench == [".venv/bin/python -m helpers.bench --quick"]  # tests/integration/test_bench.py runs it


def test_links_point_at_files():
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
