"""dev/fault_table.py replaces exactly the README's fault table between its markers, and nothing else."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.unit.scripts import load_script

SCRIPT = Path(__file__).resolve().parents[3] / "dev" / "fault_table.py"


def _script() -> ModuleType:
    return load_script(SCRIPT, "fault_table_script")


ft = _script()
README = """# title

before
<!-- fault-table:start -->
```
fault  sent
old    1
```
<!-- fault-table:end -->
after
"""


def test_only_the_text_between_the_markers_is_replaced() -> None:
    out = ft.replace_table(README, "fault  sent\n-----  ----\nnew    2\n")
    assert out == README.replace("old    1", "-----  ----\nnew    2")
    assert ft.replace_table(out, "fault  sent\n-----  ----\nnew    2\n") == out  # runs again unchanged


def test_markers_with_nothing_between_get_the_table() -> None:
    text = "a\n<!-- fault-table:start --><!-- fault-table:end -->\nb\n"
    assert ft.replace_table(text, "t") == "a\n<!-- fault-table:start -->\n```\nt\n```\n<!-- fault-table:end -->\nb\n"


@pytest.mark.parametrize("text", ["no markers", "<!-- fault-table:start -->", "<!-- fault-table:end --> x "
                                  "<!-- fault-table:start -->", README + README])
def test_missing_misordered_or_repeated_markers_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        ft.replace_table(text, "t")


def test_an_empty_table_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        ft.replace_table(README, "\n")


def test_main_rewrites_the_readme_from_the_table_file(tmp_path: Path) -> None:
    table, readme = tmp_path / "faults.txt", tmp_path / "README.md"
    table.write_text("fault  sent\nx      3\n")
    readme.write_text(README)
    assert ft.main([str(table), str(readme)]) == 0
    assert "x      3" in readme.read_text() and "old    1" not in readme.read_text()
    assert ft.main([str(tmp_path / "missing.txt"), str(readme)]) == 1
