"""DESIGN.md: backend/ never imports textual or tui/; dependencies flow one way."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_backend_never_imports_textual_or_tui() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(mods & {"textual", "tui", "rich", "textual_plotext"})
        for p in (ROOT / "backend").rglob("*.py")
        if (mods := imported_modules(p)) & {"textual", "tui", "rich", "textual_plotext"}
    }
    assert offenders == {}
