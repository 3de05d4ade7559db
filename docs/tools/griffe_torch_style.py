"""Griffe extension for the docs build: torch-style docstrings rendered by mkdocstrings' Google-style parser.

Docstrings follow torch's conventions, so that ``help()`` shows them as torch's: ``.. math::`` blocks,
``:math:`...``` roles, and one ``Args:`` entry for several parameters that share a description
(``channels, channel_reduction: ...``). mkdocstrings renders docstrings as Markdown and parses ``Args:`` one name
per entry, so before parsing this rewrites

- ``.. math:: x`` (or ``.. math::`` and an indented block) to ``\\[ x \\]`` and ``:math:`x``` to ``\\( x \\)``,
  which ``pymdownx.arithmatex`` hands to MathJax;
- Sphinx cross-reference roles (``:class:`ChannelPolicy```, ``:func:`~torch.nn.functional.mse_loss```) to
  code spans (``ChannelPolicy``, ``mse_loss``);
- ``<name>`` placeholders outside code (``"timm:<model>"``) to ``&lt;name&gt;``, which Markdown would
  otherwise drop as an unknown HTML tag;
- ``a, b: text`` in an ``Args:`` section to ``a: text`` and ``b: See `a`.``, so that every name is still
  checked against the signature (a documented parameter that does not exist fails the strict build);
- an ``Example:`` section to ``Examples:``, the Google-style name that griffe parses into code blocks (under any
  other name the ``>>>`` lines would be read as Markdown quotes), and a doctest outside such a section (a module
  docstring's) to a fenced ``pycon`` block;
- and gives every loss whose constructor takes ``**options: Unpack[LossOptions]`` an "Options" section: the table
  of every common option with that loss's defaults (``loss_options.py``), as ``help()`` shows it in the terminal.

Nothing else is changed; the source docstrings are not touched.
"""
from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import griffe


def _load_sibling(name: str):
    """A module of docs/tools/ (griffe loads this extension from its path, not as a package)."""
    qualified = f"perceptloss_docs_{name}"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        spec.loader.exec_module(module)
    return sys.modules[qualified]


loss_options = _load_sibling("loss_options")

_ROLE = re.compile(r":math:`([^`]+)`")
_XREF = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|obj|exc|const):`(~?)([^`]+)`")


def xref_roles_to_code(text: str) -> str:
    """``:class:`x``` -> ``x`` as code; ``:func:`~a.b.c``` -> ``c`` (Sphinx's ``~``: the last component)."""
    return _XREF.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)
_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Keyword Args|Keyword Arguments|Other Parameters):\s*$")
_GROUPED = re.compile(r"^(\s+)(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+):(.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rst_math_to_arithmatex(text: str) -> str:
    """``.. math::`` blocks -> ``\\[ ... \\]`` paragraphs, ``:math:`x``` -> ``\\(x\\)``."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(".. math::"):
            indent = line[: _indent(line)]
            body = [stripped[len(".. math::"):].strip()]
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(indent)):
                body.append(lines[i].strip())
                i += 1
            out += [f"{indent}\\[ {' '.join(b for b in body if b)} \\]", ""]
            continue
        out.append(_ROLE.sub(lambda m: f"\\({m.group(1)}\\)", line))
        i += 1
    return "\n".join(out)


_PLACEHOLDER = re.compile(r"<([A-Za-z][\w .-]*)>")


def escape_placeholders(text: str) -> str:
    """``<name>`` outside backticks and doctest lines -> ``&lt;name&gt;`` (shown as typed, not eaten as HTML)."""
    out = []
    for line in text.split("\n"):
        if line.lstrip().startswith((">>>", "...")):
            out.append(line)
            continue
        parts = line.split("`")
        parts[::2] = [_PLACEHOLDER.sub(r"&lt;\1&gt;", p) for p in parts[::2]]
        out.append("`".join(parts))
    return "\n".join(out)


def split_grouped_args(text: str) -> str:
    """``a, b: text`` entries of an Args section -> ``a: text`` and ``b: See `a`.`` (one name per entry)."""
    lines = text.split("\n")
    out: list[str] = []
    section_indent: int | None = None
    item_indent: int | None = None
    for line in lines:
        header = _SECTION.match(line)
        if header:
            section_indent, item_indent = len(header.group(1)), None
            out.append(line)
            continue
        if section_indent is not None and line.strip():
            if _indent(line) <= section_indent:
                section_indent = None
            elif item_indent is None:
                item_indent = _indent(line)
        grouped = _GROUPED.match(line) if section_indent is not None else None
        if grouped and _indent(line) == item_indent:
            pad, names, rest = grouped.group(1), [n.strip() for n in grouped.group(2).split(",")], grouped.group(3)
            out.append(f"{pad}{names[0]}:{rest}")
            # the continuation lines that follow belong to the first name; the others point at it afterwards
            out.append(("\0" + "\0".join(f"{pad}{n}: See `{names[0]}`." for n in names[1:])))
            continue
        out.append(line)
    # move each pointer entry after the continuation lines of the entry it follows
    result: list[str] = []
    pending: list[str] = []
    pending_indent = 0
    for line in out:
        if line.startswith("\0"):
            pending = line[1:].split("\0")
            pending_indent = _indent(pending[0])
            continue
        if pending and (not line.strip() or _indent(line) <= pending_indent):
            result += pending
            pending = []
        result.append(line)
    return "\n".join(result + pending)


_EXAMPLE = re.compile(r"^(\s*)Example:\s*$")
_EXAMPLES = re.compile(r"^(\s*)Examples?:\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def example_sections(text: str) -> str:
    """``Example:`` section headers -> ``Examples:`` (griffe's Google parser reads ``>>>`` lines as code only there)."""
    return "\n".join(_EXAMPLE.sub(r"\1Examples:", line) for line in text.split("\n"))


def fence_doctests(text: str) -> str:
    """Doctest blocks outside an ``Example(s):`` section and outside fences -> fenced ``pycon`` blocks.

    A block starts at a ``>>>`` line and runs to the next blank line or the next line indented less.
    """
    lines = text.split("\n")
    out: list[str] = []
    section: int | None = None   # the indent of the Examples header we are under
    fenced = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if _FENCE.match(line):
            fenced = not fenced
        if section is not None and stripped and _indent(line) <= section:
            section = None
        header = _EXAMPLES.match(line)
        if header and not fenced:
            section = len(header.group(1))
        if fenced or section is not None or not stripped.startswith(">>>"):
            out.append(line)
            i += 1
            continue
        pad = line[: _indent(line)]
        block = []
        while i < len(lines) and lines[i].strip() and _indent(lines[i]) >= len(pad):
            block.append(lines[i])
            i += 1
        out += [f"{pad}```pycon", *block, f"{pad}```"]
    return "\n".join(out)


_SECTION_BEFORE_OPTIONS = ("Shape:", "Example:", "Examples:")


def with_options_section(doc: str, section: str) -> str:
    """``doc`` with ``section`` before its first top-level Shape/Example section (or at its end)."""
    lines = doc.split("\n")
    for i, line in enumerate(lines):
        if line.strip() in _SECTION_BEFORE_OPTIONS and not line.startswith((" ", "\t")):
            return "\n".join(lines[:i] + section.split("\n") + [""] + lines[i:])
    return f"{doc.rstrip()}\n\n{section}"


def takes_loss_options(cls: griffe.Class) -> bool:
    """Whether the class's own constructor takes the common options (``**options: Unpack[LossOptions]``)."""
    init = cls.members.get("__init__")
    if not isinstance(init, griffe.Function):
        return False
    return any(p.kind is griffe.ParameterKind.var_keyword and str(p.annotation) == "Unpack[LossOptions]"
               for p in init.parameters)


def option_defaults(cls: griffe.Class) -> dict[str, Any]:
    """The class's own ``_option_defaults`` (the common options whose default it changes), as Python values."""
    attr = cls.members.get("_option_defaults")
    return {} if attr is None or attr.value is None else ast.literal_eval(str(attr.value))


class TorchStyle(griffe.Extension):
    """Rewrites every docstring griffe loads as described in the module docstring."""

    def on_class(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        if cls.docstring is None:
            return
        if cls.path == "perceptloss._options.LossOptions":
            cls.docstring.value += "\n\nEvery option, with its common default:\n\n" + loss_options.options_table()
        elif takes_loss_options(cls):
            cls.docstring.value = with_options_section(
                cls.docstring.value, loss_options.options_section(option_defaults(cls)))

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        value = obj.docstring.value
        if "Example:" in value:
            value = example_sections(value)
        if ">>>" in value:
            value = fence_doctests(value)
        if "math:" in value:
            value = rst_math_to_arithmatex(value)
        if ":`" in value:
            value = xref_roles_to_code(value)
        if "<" in value:
            value = escape_placeholders(value)
        if "," in value:
            value = split_grouped_args(value)
        obj.docstring.value = value
