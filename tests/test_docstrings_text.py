"""Docstrings read as written: no control characters from a backslash escape in a non-raw string (``\\top``,
``\\times`` became a tab; ``\\b``, ``\\f``, ``\\a``, ``\\v`` likewise), in every module of the package."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "perceptloss"
CONTROL = {"\t": "\\t", "\b": "\\b", "\f": "\\f", "\a": "\\a", "\v": "\\v", "\r": "\\r"}


def test_no_escaped_control_characters_in_docstrings():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                found = sorted({CONTROL[c] for c in doc or "" if c in CONTROL})
                if found:
                    bad.append(f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 1)} {found}: use r\"\"\"")
    assert not bad, "\n".join(bad)
