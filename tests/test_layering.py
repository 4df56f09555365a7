"""DESIGN.md's dependency rule, checked: hotline -> channels, ivr, ticketing, citizen_card;
ticketing and citizen_card import nothing of the other packages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"hotline", "channels", "ivr", "ticketing", "citizen_card"}
ALLOWED = {
    "ticketing": {"ticketing"},
    "citizen_card": {"citizen_card"},
    "channels": {"channels", "ticketing"},
    "ivr": {"ivr"},
    "hotline": OURS,
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_the_design_allows(package: str) -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(imported_packages(p) - ALLOWED[package])
        for p in (ROOT / package).rglob("*.py")
        if imported_packages(p) - ALLOWED[package]
    }
    assert offenders == {}
