"""The README's examples run as written, and its set-up commands are the
ones CI runs.  The examples run in a directory of the test's own, so
whatever they write lands there and nowhere shared."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The example plugin distribution is installed too: its tests are vserial's.
TEST_COMMAND = "pip install -e '.[test]' -e plugins/vserial-echo && pytest"


def test_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    assert "pip install -e . && vserial demo" in commands
    assert TEST_COMMAND in commands
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text().splitlines()
