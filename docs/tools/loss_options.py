"""The common options of every loss (``perceptloss.LossOptions``) as the API reference shows them: one table of
option, type, default and meaning, read from ``perceptloss/_options.py`` without importing it.

``LossOptions`` is the one source: each of its entries is ``name: Annotated[<type>, Option(<default>, <kind>,
<documentation>, ...)]``. The type is written as ``inspect.signature`` shows it on a loss (aliases such as
``Channels`` expanded to their ``Literal[...]``, perceptloss classes as ``perceptloss.Name``), and a loss's own
defaults (``_option_defaults = {"reduction": "none"}``) replace the common ones in its table; the tests check both
against the imported package. The docs build needs no torch.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

PACKAGE = Path(__file__).resolve().parents[2] / "perceptloss"
OPTIONS_FILE = PACKAGE / "_options.py"

#: How the table names the three kinds of option (``Option.kind``).
KIND_TITLES = {"accepts": "what it accepts", "returns": "what it returns", "runs": "how it runs"}


@dataclass(frozen=True)
class OptionRow:
    name: str
    type: str       # as inspect.signature shows it: "Literal['mean', 'sum', 'none']"
    default: Any    # the Python value
    kind: str       # "accepts", "returns" or "runs"
    doc: str


class _Module:
    """One module of the package, parsed: its imports from sibling modules and its top-level assignments."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        self.imports: dict[str, Path] = {}   # name -> the module file it is imported from
        self.assigned: dict[str, ast.expr] = {}
        for node in self.tree.body:
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                source = PACKAGE.joinpath(*node.module.split("."))
                source = source / "__init__.py" if source.is_dir() else source.with_suffix(".py")
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = source
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.assigned[node.targets[0].id] = node.value

    def type_text(self, node: ast.expr) -> str:
        """A type expression as ``perceptloss._options._annotation_text`` writes it."""
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return f"{self.type_text(node.left)} | {self.type_text(node.right)}"
        if isinstance(node, ast.Constant) and node.value is None:
            return "None"
        if isinstance(node, ast.Subscript):
            items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            head = ast.unparse(node.value)
            if head in ("Literal", "typing.Literal"):
                return f"Literal[{', '.join(repr(ast.literal_eval(i)) for i in items)}]"
            return f"{head}[{', '.join(self.type_text(i) for i in items)}]"
        if isinstance(node, ast.Attribute):
            return ast.unparse(node)  # torch.dtype, torch.memory_format
        if isinstance(node, ast.Name):
            if node.id in self.imports:  # a name of the package: an alias to expand, or a class
                source = _Module(self.imports[node.id])
                if node.id in source.assigned:
                    return source.type_text(source.assigned[node.id])
                if node.id in source.imports:
                    return source.type_text(node)
                return f"perceptloss.{node.id}"
            if node.id in self.assigned:
                return self.type_text(self.assigned[node.id])
            return node.id  # float, bool, str, int
        raise ValueError(f"{self.path}:{node.lineno}: cannot write the type {ast.unparse(node)!r} for the docs")


def read_options(path: Path = OPTIONS_FILE) -> list[OptionRow]:
    """Every entry of ``LossOptions`` in declaration order."""
    module = _Module(path)
    cls = next((n for n in module.tree.body if isinstance(n, ast.ClassDef) and n.name == "LossOptions"), None)
    if cls is None:
        raise RuntimeError(f"{path}: no class LossOptions; the docs' options tables are read from it")
    rows = []
    for node in cls.body:
        if not isinstance(node, ast.AnnAssign):
            continue
        where = f"{path}:{node.lineno}"
        ann = node.annotation
        if not (isinstance(ann, ast.Subscript) and ast.unparse(ann.value) == "Annotated"
                and isinstance(ann.slice, ast.Tuple) and len(ann.slice.elts) == 2):
            raise RuntimeError(f"{where}: a LossOptions entry must be Annotated[<type>, Option(...)]")
        hint, option = ann.slice.elts
        if not (isinstance(option, ast.Call) and ast.unparse(option.func) == "Option" and len(option.args) >= 3):
            raise RuntimeError(f"{where}: a LossOptions entry must be Annotated[<type>, Option(default, kind, doc)]")
        default, kind, doc = (ast.literal_eval(a) for a in option.args[:3])
        rows.append(OptionRow(node.target.id, module.type_text(hint), default, kind, doc))
    return rows


def _cell(text: str) -> str:
    """A table cell of plain text: one line, its pipes escaped (a bare ``|`` ends the cell)."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """A table cell in code (a ``|`` inside backticks does not end the cell)."""
    return f"`{text}`"


def options_table(overrides: Mapping[str, Any] | None = None, rows: list[OptionRow] | None = None) -> str:
    """The Markdown table of every option with this loss's defaults (``overrides``: its ``_option_defaults``)."""
    overrides = overrides or {}
    rows = read_options() if rows is None else rows
    unknown = sorted(set(overrides) - {r.name for r in rows})
    if unknown:
        raise ValueError(f"_option_defaults names {unknown}, which LossOptions does not have")
    lines = ["| option | type | default | meaning |", "| --- | --- | --- | --- |"]
    for row in rows:
        default = overrides.get(row.name, row.default)
        lines.append(f"| `{row.name}` | {_code(row.type)} | {_code(repr(default))} | "
                     f"*{KIND_TITLES[row.kind]}:* {_cell(row.doc)} |")
    return "\n".join(lines)


def options_section(overrides: Mapping[str, Any] | None = None) -> str:
    """The "Options" section a loss's docstring gets on its page (as ``help()`` shows it in the terminal)."""
    return "\n".join([
        "Options:",
        "    Keyword-only, and common to every loss: each is an entry of",
        "    [`LossOptions`][perceptloss.LossOptions], shown here with this loss's defaults.",
        "",
        *("    " + line for line in options_table(overrides).splitlines()),
    ])
