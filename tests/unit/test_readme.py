"""The README against what it describes: the topics table against topics.yaml, the `tickflow selftest` sample
and check list against the check names streams/tools/selftest.py reports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from streams.catalog import load_catalog

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def section(heading: str) -> str:
    """The README's text under `heading` (a `## ` or `### ` line), up to the next heading of any level."""
    start = README.index(f"\n{heading}\n") + len(heading) + 2
    end = re.search(r"^#{1,3} ", README[start:], re.M)
    return README[start:start + end.start()] if end else README[start:]


def selftest_checks() -> list[str]:
    """The names `SelfTest.run` gives its checks, in order: the first argument of each `self.check(...)`."""
    tree = ast.parse((ROOT / "streams" / "tools" / "selftest.py").read_text())
    return [node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "check"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "self"
            and node.args and isinstance(node.args[0], ast.Constant)]


def test_the_topics_table_names_every_topic_of_topics_yaml() -> None:
    table = [line for line in section("## Topics (`topics.yaml`)").splitlines() if line.startswith("| `")]
    named = {name for line in table for name in re.findall(r"`([^`]+)`", line.split(" | ")[0])}
    catalog = load_catalog(ROOT / "topics.yaml")
    assert {t.name for t in catalog.topics} - named == set()
    for t in catalog.topics:  # each in the row of its role
        row = next(line for line in table if f"`{t.name}`" in line.split(" | ")[0])
        assert row.split(" | ")[1] == {"rejected": "dead letter"}.get(t.role, t.role), t.name


def test_the_selftest_sample_and_check_list_use_the_reported_check_names() -> None:
    checks = selftest_checks()
    assert len(checks) == 8 and checks[0] == "config_management"
    text = section("### `tickflow selftest`")
    sample = text.split("```\n", 2)[1]
    assert re.findall(r"^(?:PASS|FAIL)  (\S+)", sample, re.M) == checks
    assert all(re.match(r"^(?:PASS|FAIL)  .{22} \S", line) for line in sample.splitlines()
               if line.startswith(("PASS", "FAIL")))  # the name padded to 22, as SelfTest.check prints it
    assert re.findall(r"^  (?:✅|❌|PASS|FAIL) (\w+): ", sample, re.M) == checks
    assert re.findall(r"^- \*\*([^*]+)\*\*: ", text, re.M) == checks
