"""No module of the package reads another module's underscore attributes: the parts plug together through
public API only (the loss contract), as a user's code would.

Rule, checked with ``ast`` over every module of ``perceptloss``: an attribute ``obj._name`` (``obj`` not
``self``, ``cls`` or ``super()``) or an import ``from .mod import _name`` is a private cross-module access when
``_name`` is defined (a function, class, module-level name or an attribute assigned) in another module of the
package and not in the accessing one. Underscore names that only PyTorch defines (``torch._C``,
``module._parameters``) are PyTorch's business, not this rule's.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "perceptloss"


def _defined_private_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _rooted_at_torch(node: ast.expr) -> bool:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return isinstance(node, ast.Name) and node.id == "torch"


def _is_own(base: ast.expr) -> bool:
    if isinstance(base, ast.Name) and base.id in ("self", "cls"):
        return True
    return isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super"


def private_cross_module_accesses(package: Path = PACKAGE) -> list[str]:
    """``path:line: name`` for every private cross-module access in ``package`` (see the module docstring)."""
    trees = {path: ast.parse(path.read_text(), str(path)) for path in sorted(package.rglob("*.py"))}
    defined = {path: _defined_private_names(tree) for path, tree in trees.items()}
    hits = []
    for path, tree in trees.items():
        elsewhere = set().union(*(names for other, names in defined.items() if other != path)) - defined[path]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr in elsewhere and not _is_own(node.value)
                    and not _rooted_at_torch(node.value)):
                hits.append(f"{path.relative_to(package.parent)}:{node.lineno}: .{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                hits += [f"{path.relative_to(package.parent)}:{node.lineno}: import {a.name}"
                         for a in node.names if a.name in elsewhere]
    return hits


def test_no_private_cross_module_access():
    hits = private_cross_module_accesses()
    assert not hits, "modules reading other modules' private names:\n" + "\n".join(hits)


def test_the_scan_finds_what_it_should(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("def _helper():\n    pass\n\nclass A:\n    def __init__(self):\n        self._state = 1\n")
    (pkg / "b.py").write_text(
        "from .a import _helper, A\n\ndef f(a: A):\n    return a._state\n\nclass B:\n    def g(self):\n"
        "        return self._state\n"
    )
    hits = private_cross_module_accesses(pkg)
    assert hits == ["pkg/b.py:1: import _helper", "pkg/b.py:4: ._state"]
