"""mkdocs hook: every formula rendered to MathML at build time, so that the site shows math with no script and no
network (browsers render MathML natively).

``pymdownx.arithmatex`` (generic mode) marks the TeX of the pages and of the docstrings as
``<span class="arithmatex">\\(...\\)</span>`` and ``<div class="arithmatex">\\[...\\]</div>``; this hook replaces
each with the MathML that ``latex2mathml`` makes of it. A command latex2mathml does not know would be shown as its
raw name, so it fails the build, naming the page and the formula.
"""
from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

_MARKED = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.S)
_DELIMITERS = {"span": ("\\(", "\\)"), "div": ("\\[", "\\]")}
_UNKNOWN = re.compile(r">(\\[A-Za-z]+)<")


def tex_to_mathml(tex: str, block: bool) -> str:
    """One formula (TeX without its delimiters) as a ``<math>`` element; ValueError for an unknown command."""
    mathml = convert(tex.strip(), display="block" if block else "inline")
    unknown = _UNKNOWN.findall(mathml)
    if unknown:
        raise ValueError(f"the TeX command(s) {', '.join(sorted(set(unknown)))} in {tex!r} cannot be rendered "
                         "at build time (latex2mathml does not know them); write the formula without them")
    return mathml


def render_math(page_html: str, where: str = "") -> str:
    """``page_html`` with every arithmatex-marked formula replaced by MathML."""

    def replace(match: re.Match) -> str:
        tag, text = match.group(1), html.unescape(match.group(2)).strip()
        opening, closing = _DELIMITERS[tag]
        if not (text.startswith(opening) and text.endswith(closing)):
            raise ValueError(f"{where}: a formula marked by arithmatex without {opening} ... {closing}: {text!r}")
        try:
            mathml = tex_to_mathml(text[len(opening):-len(closing)], block=tag == "div")
        except Exception as error:
            raise ValueError(f"{where}: {error}") from error
        return f'<{tag} class="math">{mathml}</{tag}>'

    return _MARKED.sub(replace, page_html)


def on_page_content(output: str, page, **kwargs) -> str:
    return render_math(output, page.file.src_uri)
