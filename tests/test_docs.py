"""The README's and docs/'s Python examples run as written, each on its own, and every relative link
in them resolves: the file exists and a ``#anchor`` names one of its headings."""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         ROOT / "experiments" / "results" / "performance_history.md"]
BLOCKS = [(page, number, block) for page in PAGES
          for number, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))]
LAUNCH = re.compile(r"# jaxcnn launch (.*?) -- python (\S+)\n")


def _name(page: pathlib.Path) -> str:
    return str(page.relative_to(ROOT))


def test_the_pages_with_examples_have_them():
    with_examples = {_name(page) for page, _, _ in BLOCKS}
    assert {"README.md", "docs/models-and-training.md", "docs/verifying.md", "docs/distributed.md",
            "docs/ops.md"} <= with_examples


@pytest.mark.parametrize("page, number, block", BLOCKS, ids=[f"{_name(p)}-{n + 1}" for p, n, _ in BLOCKS])
def test_python_block_runs_on_its_own(page, number, block, tmp_path):
    """A fresh process per block, in an empty folder: a block that leans on a name another block
    defined (or on the test suite's float64 mode) fails here. A block that starts with
    ``# jaxcnn launch ARGS -- python FILE`` is saved as FILE and run by the launcher so."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               JAX_PLATFORMS="cpu")
    launch = LAUNCH.match(block)
    if launch:
        (tmp_path / launch.group(2)).write_text(block)
        command = [sys.executable, "-m", "jaxcnn", "launch", *shlex.split(launch.group(1)), "--timeout", "540",
                   "--", sys.executable, launch.group(2)]
    else:
        command = [sys.executable, "-c", block]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, f"{_name(page)}, python block {number + 1}:\n{block}\n{proc.stdout}\n{proc.stderr}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_slug_follows_github():
    assert slug("`jaxcnn verify`: where the time goes") == "jaxcnn-verify-where-the-time-goes"
    assert slug("ReLU at x = 0: the lectures' convention") == "relu-at-x--0-the-lectures-convention"
    assert slug("Winograd F(2×2, 3×3)") == "winograd-f22-33"


def headings(page: pathlib.Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [line.lstrip("#").strip() for line in text.splitlines() if re.match(r"#{1,6} ", line)]


def links(page: pathlib.Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", target)]


LINKS = [(page, target) for page in PAGES for target in links(page)]


@pytest.mark.parametrize("page, target", LINKS, ids=[f"{_name(p)}->{t}" for p, t in LINKS])
def test_relative_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.exists(), f"{_name(page)} links to {target}: no such file"
    if anchor:
        assert anchor in {slug(h) for h in headings(file)}, f"{_name(page)} links to {target}: no such heading"


def test_links_are_found():
    assert ("docs/ops.md#forward-mode" in links(ROOT / "README.md")
            and "performance.md#scan-vs-steps" in links(ROOT / "docs" / "models-and-training.md"))


def test_code_names_existing_performance_sections():
    """The code says why in a line and names a section of docs/performance.md: each one exists."""
    sections = set(headings(ROOT / "docs" / "performance.md"))
    named = []
    for source in [*(ROOT / "jaxcnn").rglob("*.py"), *(ROOT / "experiments").glob("*.py")]:
        text = source.read_text()
        for match in re.finditer(r'performance\.md`{0,2},\s*"([^"]+)"', text):
            title = re.sub(r"\s*\n\s*(#:?\s*)?", " ", match.group(1))
            named.append((str(source.relative_to(ROOT)), title))
    assert len(named) >= 10
    missing = [(source, title) for source, title in named if title not in sections]
    assert not missing, f"sections named in the code but not in docs/performance.md: {missing}"
