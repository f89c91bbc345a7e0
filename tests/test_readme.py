"""The README is a front page: short, its set-up commands are what CI runs, and its performance table is
the committed benchmark's, generated (its Python examples and links: tests/test_docs.py)."""

import importlib.util
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
spec = importlib.util.spec_from_file_location("readme_table", README.parent / "experiments" / "readme_table.py")
readme_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_table)


def test_readme_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)[1]
    assert test_command.strip() in ci


def test_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_performance_table_is_the_committed_benchmarks():
    """Regenerate with ``python experiments/readme_table.py --write`` after committing a new run."""
    readme = README.read_text()
    generated = readme_table.table(readme_table.RESULTS.read_text())
    assert readme == readme_table.replaced(readme, generated)


def test_performance_table_shows_every_benchmarked_network_and_who_is_faster():
    text = (
        "jax 0.10.2, cpu; commit abc1234; jitted step\n\n"
        "| network | batch | ms ops / reference | ops / reference (95%) | reference / itself (95%): noise floor "
        "| Flax / ops, PyTorch / ops | temp MB ops / ref |\n|---|---|---|---|---|---|---|\n"
        "| Net A | 128 | 10.00 / 20.00 | **0.500** (0.4–0.6) | 1.000 (0.9–1.1) | 2.00 / 0.50 | 1 / 1 |\n"
        "| Net B | 32 | 3.00 / 4.00 | **0.750** (0.7–0.8) | 0.980 (0.9–1.1) | — | 1 / 1 |\n"
    )
    table = readme_table.table(text)
    assert "at commit abc1234" in table and "0.980–1.000" in table
    assert "| Net A | 128 | 10.00 | 20.00 | 0.500 (0.4–0.6) | 2.00 | 0.50 |" in table
    assert "| Net B | 32 | 3.00 | 4.00 | 0.750 (0.7–0.8) | — | — |" in table
    assert table.endswith("PyTorch CPU 2.00× on Net A (batch 128).")
