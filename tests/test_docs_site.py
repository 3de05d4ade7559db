"""The built documentation site as a reader gets it (``make docs`` builds it into site/; CI builds it before the
tests): formulas rendered with no network, docstring examples shown as code, every common option on each loss's
page, public names only, nothing loaded from outside the site, and nothing cut off at a 1,400-px window.

The quick tests read the HTML files; ``test_site_in_a_browser`` (slow: it starts a headless Chromium) looks at
every page as rendered. Both skip, saying how, when the site is not built; the browser test also when no
headless Chromium is installed. ``PERCEPTLOSS_SITE`` names another built site; ``PERCEPTLOSS_SCREENSHOTS`` a
folder for the browser test's screenshots of the FeatureLoss page and a guide page with formulas.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import perceptloss

from .browser import HOW_TO_GET_ONE, Browser, find_browser

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("PERCEPTLOSS_SITE", ROOT / "site"))
LOSSES = ("FeatureLoss", "StyleLoss", "LPIPS", "DISTS")
WIDTH = 1400


def _site() -> Path:
    if not (SITE / "index.html").is_file():
        pytest.skip(f"the documentation site is not built at {SITE}: run make docs first")
    return SITE


def _pages() -> list[Path]:
    return sorted(_site().rglob("*.html"))


def _api_pages():
    name = "docs_tools_api_pages"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "tools" / "api_pages.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


class _Page(HTMLParser):
    """What the checks need from a page: its prose (text outside code, scripts and styles), the external
    resources it loads, and its blockquotes (nesting depth, text)."""

    SKIP = {"code", "pre", "script", "style", "math"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.prose: list[str] = []
        self.external: list[str] = []
        self.quotes: list[tuple[int, str]] = []   # (depth, text) per blockquote
        self._skip = 0
        self._quote_depth = 0
        self._quote_text: list[list[str]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self.SKIP:
            self._skip += 1
        if tag == "blockquote":
            self._quote_depth += 1
            self._quote_text.append([])
        url = attrs.get("src") if tag == "script" else attrs.get("href") if (
            tag == "link" and "stylesheet" in (attrs.get("rel") or "")) else None
        if url and re.match(r"^(https?:)?//", url):
            self.external.append(f"<{tag}> {url}")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        if tag == "blockquote" and self._quote_depth:
            self.quotes.append((self._quote_depth, "".join(self._quote_text.pop())))
            self._quote_depth -= 1

    def handle_data(self, data):
        for texts in self._quote_text:
            texts.append(data)
        if not self._skip:
            self.prose.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_nothing_is_loaded_from_outside_the_site():
    """No script or stylesheet from a CDN or a font service: the site works offline."""
    found = {str(p.relative_to(SITE)): _parse(p).external for p in _pages()}
    assert not {k: v for k, v in found.items() if v}


def test_formulas_are_rendered_at_build_time():
    """No raw TeX in the text (it would show as ``\\[ ... \\]`` without a network); the formulas are MathML."""
    raw = {}
    for path in _pages():
        text = "".join(_parse(path).prose)
        hits = re.findall(r"\\[\[\]()]|\\(?:frac|sum|lVert|mathrm)\b", text)
        if hits:
            raw[str(path.relative_to(SITE))] = hits[:5]
    assert not raw, f"raw TeX on the pages: {raw}"
    for page in ("index.html", "operator/index.html", "reference/losses/index.html"):
        html = (SITE / page).read_text(encoding="utf-8")
        assert "<math" in html and 'class="arithmatex"' not in html, page


def test_examples_are_code_not_quotes():
    """Docstring examples render as code blocks: no ``>>>`` line became a Markdown quote."""
    bad = {}
    for path in _pages():
        page = _parse(path)
        reference = "reference" in path.relative_to(SITE).parts
        quotes = [t for depth, t in page.quotes if reference or depth > 1 or ">>>" in t or "import " in t]
        prompts = ">>>" in "".join(page.prose)
        if quotes or prompts:
            bad[str(path.relative_to(SITE))] = (quotes[:2], prompts)
    assert not bad
    html = (SITE / "reference" / "losses" / "index.html").read_text(encoding="utf-8")
    assert html.count('<span class="gp">&gt;&gt;&gt; </span>') >= 10   # the examples' prompts, highlighted as code


def _section(html: str, name: str) -> str:
    """The HTML of one object's entry on a reference page, up to the next entry of the same level."""
    start = html.index(f'id="perceptloss.{name}"')
    level = html.rfind("<h", 0, start)
    tag = html[level:level + 3]
    end = html.find(f'{tag} id="perceptloss.', start + 1)
    return html[start:end if end != -1 else len(html)]


def _options_rows(section: str) -> dict[str, tuple[str, str]]:
    """{option: (type, default)} of the Options table in an entry."""
    assert '<details class="options"' in section, "the entry has no Options table"
    options = section[section.index('<details class="options"'):]
    options = options[:options.index("</details>")]
    rows = re.findall(r"<tr>\s*<td><code>(\w+)</code></td>\s*<td><code>(.*?)</code></td>\s*"
                      r"<td><code>(.*?)</code></td>", options, flags=re.S)
    import html as html_module

    return {name: (html_module.unescape(t), html_module.unescape(d)) for name, t, d in rows}


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_page_lists_every_option(name):
    """Each loss's entry has the Options table: every LossOptions name, with the type and the default that
    ``inspect.signature`` gives for that loss."""
    html = (_site() / "reference" / "losses" / "index.html").read_text(encoding="utf-8")
    rows = _options_rows(_section(html, name))
    assert list(rows) == list(perceptloss.LossOptions.__annotations__)
    params = inspect.signature(getattr(perceptloss, name)).parameters
    for option, (type_text, default) in rows.items():
        assert (type_text, default) == (params[option].annotation, repr(params[option].default)), option


def test_reference_holds_the_public_names_only():
    """Every name of ``perceptloss.__all__`` has its entry; the names left out as internal have none."""
    reference = "".join(p.read_text(encoding="utf-8") for p in (_site() / "reference").rglob("*.html"))
    for name in perceptloss.__all__:
        assert f'id="perceptloss.{name}"' in reference, name
    for module, names in _api_pages().INTERNAL.items():
        for name in names:
            assert f'id="{module}.{name}"' not in reference, f"{module}.{name}"


def test_cli_benchmarks_and_navigation():
    site = _site()
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    for command in ("list", "layers", "weights", "fetch", "verify", "info", "score"):
        assert f'id="{command}"' in cli, command
    benchmarks = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert benchmarks.count("<table") >= 5 and "Machine:" in benchmarks and "Reproduce:" in benchmarks
    home = (site / "index.html").read_text(encoding="utf-8")
    # the maintainers' GPU check sits in the Development section, after the user guide and the reference
    assert home.index('href="benchmarks/"') < home.index("Development") < home.index('href="gpu-check/"')


# -- in a browser -----------------------------------------------------------------------------------------

_CHECK = r"""(() => {
  const out = {pageWidth: document.documentElement.scrollWidth, window: window.innerWidth, cut: [],
               outside: [], raw: [], quotedExamples: 0, unrendered: 0};
  for (const el of document.querySelectorAll('pre, pre > code, .md-typeset__scrollwrap, div.math, .doc-signature')) {
    if (el.scrollWidth > el.clientWidth + 1) out.cut.push(el.tagName + '.' + el.className + ': ' +
        (el.innerText || '').slice(0, 60));
  }
  for (const s of document.querySelectorAll('script[src], link[rel~=stylesheet]')) {
    const url = s.src || s.href;
    if (!url.startsWith('file:')) out.outside.push(url);
  }
  const text = document.body.innerText;
  out.raw = (text.match(/\\[\[\]()]/g) || []).slice(0, 5);
  for (const q of document.querySelectorAll('blockquote')) if (/>>>|import /.test(q.innerText)) out.quotedExamples++;
  for (const m of document.querySelectorAll('math')) if (m.getBoundingClientRect().width === 0) out.unrendered++;
  return out;
})()"""

_OPTIONS = r"""(() => {
  const heading = document.getElementById('perceptloss.FeatureLoss');
  let el = heading.closest('.doc-object');
  const table = el.querySelector('details.options table');
  return table ? [...table.querySelectorAll('tbody tr td:first-child')].map(td => td.innerText.trim()) : null;
})()"""


@pytest.mark.slow
def test_site_in_a_browser():
    site = _site()
    binary = find_browser()
    if binary is None:
        pytest.skip(HOW_TO_GET_ONE)
    shots = os.environ.get("PERCEPTLOSS_SCREENSHOTS")
    problems = {}
    with Browser(binary, width=WIDTH, height=900) as browser:
        for path in _pages():
            browser.open(path.as_uri())
            found = browser.evaluate(_CHECK)
            issues = {k: v for k, v in found.items() if k not in ("pageWidth", "window") and v}
            if found["pageWidth"] > found["window"]:
                issues["page wider than the window"] = found["pageWidth"]
            if issues:
                problems[str(path.relative_to(site))] = issues
        browser.open((site / "reference" / "losses" / "index.html").as_uri())
        listed = browser.evaluate(_OPTIONS)
        if listed != list(perceptloss.LossOptions.__annotations__):
            problems["FeatureLoss's Options table"] = listed
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            browser.evaluate("document.getElementById('perceptloss.FeatureLoss').scrollIntoView()")
            browser.screenshot(Path(shots) / "featureloss.png")
            browser.evaluate("document.querySelector('details.options').scrollIntoView()")
            browser.screenshot(Path(shots) / "featureloss-options.png")
            browser.open((site / "operator" / "index.html").as_uri())
            browser.screenshot(Path(shots) / "operator-formulas.png")
    assert not problems, problems
