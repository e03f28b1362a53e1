"""The layout keeps its boundaries: operations (logs, metrics, health) are imported by the runtime and
the app, so they import neither, not even for types (they read them through ops/views.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "orchestrator"
BELOW_OPS = ("orchestrator.app", "orchestrator.runtime", "orchestrator.persona", "orchestrator.fleet",
             "orchestrator.community", "orchestrator.demo")  # fmt: skip


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute (relative imports resolved), type-only ones included."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("module", sorted((PACKAGE / "ops").glob("*.py")), ids=lambda p: p.name)
def test_operations_import_neither_the_app_nor_the_runtime(module: Path) -> None:
    wrong = sorted(name for name in imported_modules(module) if name.startswith(BELOW_OPS))
    assert not wrong, f"{module.name} imports {wrong}: read them through orchestrator/ops/views.py"
