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
  checked against the signature (a documented parameter that does not exist fails the strict build).

Nothing else is changed; the source docstrings are not touched.
"""
from __future__ import annotations

import re
from typing import Any

import griffe

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


class TorchStyle(griffe.Extension):
    """Rewrites every docstring griffe loads as described in the module docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        value = obj.docstring.value
        if "math:" in value:
            value = rst_math_to_arithmatex(value)
        if ":`" in value:
            value = xref_roles_to_code(value)
        if "<" in value:
            value = escape_placeholders(value)
        if "," in value:
            value = split_grouped_args(value)
        obj.docstring.value = value
