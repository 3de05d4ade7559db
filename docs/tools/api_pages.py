"""mkdocs hook: the API reference, one page per group of ``perceptloss.__all__``.

The names are read from ``perceptloss/__init__.py`` without importing it (the docs build needs no torch): the
``__all__`` list, and for each name the module its ``from .module import name`` line takes it from, which picks
its page. A name added to or removed from ``__all__`` appears on or leaves its page at the next build; a name in
``__all__`` that ``__init__.py`` does not import is an error, as is a page list that does not match.

The public submodules (``MODULES``) are documented in full on their pages, except the names they export only for
the package's own modules (``INTERNAL``). The nav gets "API reference" before the maintainers' "Development".
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INIT = ROOT / "perceptloss" / "__init__.py"

#: (page, title, what it holds, the first component of the modules whose names it lists), in nav order.
GROUPS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("losses", "Losses", "The loss modules and their common base. Every loss takes (N, C, H, W) images in "
     "`input_range` and returns a scalar (or (N,) terms with `reduction=\"none\"`); see the "
     "[losses guide](../losses.md). Each loss's *Options* table lists the keyword options every loss takes "
     "([`LossOptions`](#perceptloss.LossOptions)) with that loss's defaults.",
     ("loss", "lpips", "style", "dists", "fdl", "volume", "_base", "basicsr", "tiled", "tiling", "criteria",
      "metric_table", "_options")),
    ("channels", "Channels and preprocessing", "How images that are not RGB reach an RGB network, and what "
     "each set of weights expects as input.", ("channels", "preprocessing")),
    ("backbones", "Backbones", "The backbone registry, layer names and presets; see the "
     "[backbones guide](../backbones.md).", ("registry", "factory", "backbones")),
    ("weights", "Weights", "The weights catalogue and its offline cache; see "
     "[weights](../backbones.md#weights).", ("weights",)),
    ("operator", "Operator and hardware", "The fused distance operator, its pure-PyTorch reference, and the "
     "hardware rule behind `dtype=\"auto\"`; see [the fused operator](../operator.md).",
     ("functional", "_ops", "cpu_kernels", "hardware", "backends", "_dtypes")),
)
OTHER = ("other", "Other", "Public names not covered by the pages above.")


def public_names() -> list[tuple[str, str]]:
    """``[(name, module)]`` for every name of ``perceptloss.__all__`` in its order; module "" for names defined
    in ``__init__.py`` itself."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"), filename=str(INIT))
    source: dict[str, str] = {}
    exported = None
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            for alias in node.names:
                name = alias.asname or alias.name
                source[name] = node.module or alias.name  # "from . import backends" -> module "backends"
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    if target.id == "__all__":
                        exported = ast.literal_eval(node.value)
                    else:
                        source.setdefault(target.id, "")
    if exported is None:
        raise RuntimeError(f"{INIT}: no literal __all__ = [...] found; the API reference is generated from it")
    missing = [n for n in exported if n not in source]
    if missing:
        raise RuntimeError(f"{INIT}: __all__ lists {missing}, which __init__.py neither imports nor defines")
    return [(n, source[n]) for n in exported]


def pages() -> list[tuple[str, str, str, list[str]]]:
    """``[(page, title, intro, names)]`` for the groups that have names, in nav order."""
    groups = [(page, title, intro, []) for page, title, intro, _ in (*GROUPS, (*OTHER, ()))]
    for name, module in public_names():
        first = module.split(".")[0]
        index = next((i for i, g in enumerate(GROUPS) if first in g[3]), len(GROUPS))
        groups[index][3].append(name)
    return [g for g in groups if g[3]]


#: The public submodules documented in full on a page, after its top-level names (their own ``__all__``).
MODULES: dict[str, tuple[str, ...]] = {
    "losses": ("perceptloss.criteria", "perceptloss.metric", "perceptloss.metric_table", "perceptloss.fdl"),
    "channels": ("perceptloss.channels", "perceptloss.preprocessing"),
    "backbones": ("perceptloss.registry",),
    "weights": ("perceptloss.weights",),
    "operator": ("perceptloss.functional", "perceptloss.hardware", "perceptloss.backends",
                 "perceptloss.backends.cpu", "perceptloss.backends.probe"),
}


#: Names a public module exports for the package's own modules (its command line, its losses) that are no part
#: of what a user calls: left out of the reference. Each must still exist (tests/test_docs_tools.py).
INTERNAL: dict[str, tuple[str, ...]] = {
    "perceptloss.weights": ("cache_lock", "save_checked", "load_checked", "convert_to_cache", "missing_message",
                            "cache_problem", "package_file", "load_backbone_file", "group_entries", "StateDict"),
    "perceptloss.hardware": ("resolve_dtype", "warn_if_emulated", "autocast_warning"),
}

#: Names whose members are not listed on their page (their docstring says all of it).
NO_MEMBERS = ("LossOptions",)


def page_markdown(title: str, intro: str, names: list[str], page: str = "") -> str:
    lines = [f"# {title}", "", intro, ""]
    for name in names:
        lines += [f"::: perceptloss.{name}", ""]
        if name in NO_MEMBERS:
            lines[-1:] = ["    options:", "      members: false", ""]
    for module in MODULES.get(page, ()):
        lines += [f"::: {module}", "    options:", "      show_root_heading: true", "      heading_level: 2",
                  "      show_submodules: false"]
        if module in INTERNAL:
            lines.append(f"      filters: {['!^_'] + [f'!^{n}$' for n in INTERNAL[module]]}")
        lines.append("")
    return "\n".join(lines)


def index_markdown(groups: list[tuple[str, str, str, list[str]]]) -> str:
    lines = ["# API reference", "",
             "Every public name of `perceptloss` (its `__all__`), generated from the docstrings. "
             "The guide pages explain how the pieces fit together.", ""]
    for page, title, _, names in groups:
        lines += [f"## [{title}]({page}.md)", ""]
        lines += [f"- [`perceptloss.{n}`]({page}.md#perceptloss.{n})" for n in names]
        lines.append("")
    return "\n".join(lines)


def on_config(config, **kwargs):
    groups = pages()
    nav = [e for e in config["nav"] if not (isinstance(e, dict) and "API reference" in e)]
    entry = {"API reference": [{"Overview": "reference/index.md"}] + [{title: f"reference/{page}.md"} for page, title, _, _ in groups]}
    # before the maintainers' "Development" section, if there is one
    at = next((i for i, e in enumerate(nav) if isinstance(e, dict) and "Development" in e), len(nav))
    config["nav"] = nav[:at] + [entry] + nav[at:]
    config["extra"]["api_pages"] = groups
    return config


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File  # imported here so that the tests can read this file without mkdocs

    groups = config["extra"]["api_pages"]
    files.append(File.generated(config, "reference/index.md", content=index_markdown(groups)))
    for page, title, intro, names in groups:
        files.append(File.generated(config, f"reference/{page}.md", content=page_markdown(title, intro, names, page)))
    return files
