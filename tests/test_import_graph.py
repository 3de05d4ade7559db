"""perceptloss's modules import each other without a cycle: at module level, inside functions or for type names.

The graph is read from the source with ``ast``: every ``import`` / ``from ... import`` of a perceptloss module
anywhere in a module (function bodies and ``if TYPE_CHECKING:`` blocks included: a type name is a dependency all
the same, and a cycle through one is a layering cycle that the next runtime import closes) is an edge to the
module it names, and to the subpackages above it (importing ``perceptloss.backbones.vgg`` runs
``perceptloss/backbones/__init__.py`` first). The root package ``perceptloss`` is an edge only when a module
imports from it by name (``from perceptloss import FeatureLoss``), not as the parent every submodule has.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "perceptloss"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _bound_names(package: str) -> set[str]:
    """Names a package's ``__init__`` binds (defined, assigned or imported), e.g. FeatureLoss for perceptloss."""
    names = set()
    for node in ast.walk(ast.parse(MODULES[package].read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _with_parents(name: str) -> set[str]:
    """``name`` and the subpackages above it (not the root package)."""
    parts = name.split(".")
    return {".".join(parts[:k]) for k in range(2, len(parts) + 1)}


def _ancestors(module: str) -> set[str]:
    """The packages that contain ``module``: Python runs them before ``module`` itself."""
    parts = module.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts))}


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The perceptloss modules an import statement in ``module`` runs (beyond the packages containing it)."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "perceptloss":
                found.add("perceptloss")
            elif alias.name.startswith("perceptloss."):
                found |= _with_parents(alias.name)
        return {t for t in found if t in MODULES} - _ancestors(module)
    if node.level:
        base = module if _is_package(module) else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
        if base != "perceptloss" and not base.startswith("perceptloss."):
            return set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in MODULES:
            found |= _with_parents(sub)  # a submodule, e.g. ``from . import registry``
        elif not _is_package(base) or alias.name in _bound_names(base):
            found |= _with_parents(base) | {base}  # a name the module binds, e.g. ``from perceptloss import X``
        # else: a compiled submodule such as perceptloss._C (it imports nothing of perceptloss)
    return {t for t in found if t in MODULES} - _ancestors(module)


def import_graph() -> dict[str, set[str]]:
    """{module: the perceptloss modules it imports anywhere in its body, ``if TYPE_CHECKING:`` blocks included}."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _targets(module, node)
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_sees_module_function_and_type_checking_imports():
    graph = import_graph()
    assert "perceptloss.registry" in graph["perceptloss.backbones.vgg"]  # module level, relative ``..``
    assert "perceptloss.weights" in graph["perceptloss.backbones.timm_backbone"]  # inside hub_offline_if_requested
    assert "perceptloss.backbones" in graph["perceptloss.tiling"]  # the parent package of backbones.sequential
    assert "perceptloss._extractor" in graph["perceptloss.registry"]  # under TYPE_CHECKING only
    assert "perceptloss" not in graph["perceptloss._ops"]  # ``from . import _C``: the compiled operator


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_imports_the_root_package():
    """Only the root ``__init__`` gathers the public names; no module reaches back into it."""
    graph = import_graph()
    assert [m for m, edges in graph.items() if "perceptloss" in edges] == []


@pytest.mark.parametrize("module", ["perceptloss.registry", "perceptloss.weights"])
def test_the_registry_and_catalogue_import_no_backbone_family(module):
    """timm-style: each family registers itself beside its model; the mechanism knows none of them, not even
    for a type name (the builders' type, FeatureExtractor, lives outside the backbones package)."""
    reached = _closure(import_graph(), module)
    assert not [m for m in reached if m == "perceptloss.backbones" or m.startswith("perceptloss.backbones.")]


def test_the_registry_reads_the_catalogue_and_not_the_other_way_round():
    """The weights catalogue is the one place weight entries are kept: the registry imports it (``list_weights``)
    and no module of ``perceptloss.weights`` imports the registry, not even for a type name (provenance reads a
    backbone through its own ``Backbone`` protocol)."""
    graph = import_graph()
    assert "perceptloss.weights" in graph["perceptloss.registry"]
    catalogue = [m for m in graph if m == "perceptloss.weights" or m.startswith("perceptloss.weights.")]
    assert [m for m in catalogue if "perceptloss.registry" in _closure(graph, m)] == []
