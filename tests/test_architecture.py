"""The layout rules of ARCHITECTURE.md that import-linter cannot see: module size, lifespan state, hidden imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gateway"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 400
STATE_READERS = {PACKAGE / "state.py", PACKAGE / "aggregator" / "state.py"}


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


@pytest.mark.parametrize("module", MODULES, ids=_name)
def test_modules_stay_small(module: Path) -> None:
    """Every module of the package can be read whole: at most 400 lines."""
    lines = len(module.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{_name(module)} has {lines} lines: split it by job"


@pytest.mark.parametrize("module", MODULES, ids=_name)
def test_only_state_modules_read_app_state(module: Path) -> None:
    """`app.state` is read and written in the two state modules only (typed accessors elsewhere)."""
    if module in STATE_READERS:
        return
    tree = ast.parse(module.read_text(encoding="utf-8"))
    uses = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "state"
        and isinstance(node.value, ast.Attribute | ast.Name)
        and (getattr(node.value, "attr", None) or getattr(node.value, "id", None)) == "app"
    ]
    assert uses == [], f"{_name(module)} touches app.state on lines {uses}: use its state module"


@pytest.mark.parametrize("module", MODULES, ids=_name)
def test_no_project_import_hides_inside_a_function(module: Path) -> None:
    """Imports of the package's own modules sit at the top of a module, never inside a function
    (an import hidden in a function is how an import circle is dodged). The command line is the
    exception: each command imports what it runs, so that `--help` does not load the whole gateway."""
    if module.is_relative_to(PACKAGE / "cli"):
        return
    tree = ast.parse(module.read_text(encoding="utf-8"))
    hidden = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gateway")) or (
                isinstance(node, ast.Import)
                and any(alias.name.startswith("gateway") for alias in node.names)
            ):
                hidden.append(node.lineno)
    assert hidden == [], f"{_name(module)} imports project modules inside functions: lines {hidden}"
