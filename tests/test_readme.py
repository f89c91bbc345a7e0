"""The README's Python examples run as written, each on its own, as a user pastes one into a fresh interpreter."""

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_python_block_runs_on_its_own(number):
    """A fresh process per block: a block that leans on a name another block defined (or on the test
    suite's float64 mode) fails here."""
    proc = subprocess.run([sys.executable, "-c", BLOCKS[number]], capture_output=True, text=True, timeout=600,
                          cwd=README.parent)
    assert proc.returncode == 0, f"README python block {number + 1}:\n{BLOCKS[number]}\n{proc.stderr}"


def test_readme_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)[1]
    assert test_command.strip() in ci
