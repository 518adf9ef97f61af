"""The import contracts in pyproject.toml name the modules they guard by hand; these tests keep those lists
equal to what the code declares, so a provider added to producers/registry.py but forgotten in the
"no provider imports another provider" contract fails here instead of going unchecked."""

from __future__ import annotations

import tomllib
from pathlib import Path

import producers.registry as registry
from producers.base import Source

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
INDEPENDENCE = "no provider imports another provider"


def _contract(name: str) -> dict:
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    matches = [c for c in contracts if c["name"] == name]
    assert len(matches) == 1, f"pyproject.toml should have exactly one contract named {name!r}"
    return matches[0]


def provider_modules() -> set[str]:
    """The modules defining the Source classes the registry builds from (producers.finnhub for the three
    Finnhub sources, ...), found from the registry's own imports rather than a second hand list."""
    return {obj.__module__ for obj in vars(registry).values()
            if isinstance(obj, type) and issubclass(obj, Source) and obj is not Source}


def test_provider_modules_are_found() -> None:
    # Guards the helper above: every registry entry's provider is covered (news and finnhub share a module).
    modules = provider_modules()
    assert {"producers.finnhub", "producers.yahoo", "producers.simulated"} <= modules
    assert all(m.startswith("producers.") for m in modules)
    assert len(modules) >= len(registry.BUILDERS) - 1


def test_independence_contract_lists_every_provider_module() -> None:
    contract = _contract(INDEPENDENCE)
    assert contract["type"] == "independence"
    listed = contract["modules"]
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert set(listed) == provider_modules()
