"""The docs build's own code (docs/tools/): the API reference lists exactly ``perceptloss.__all__``, each name on
one page, and the docstring rewrites that let torch-style docstrings render (the strict build itself is
``make docs``, which CI runs)."""
import importlib.util
import sys
from pathlib import Path

import pytest

import perceptloss

TOOLS = Path(__file__).resolve().parents[1] / "docs" / "tools"


def _load(name: str):
    """A module of docs/tools/ (not a package), loaded once."""
    qualified = f"docs_tools_{name}"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, TOOLS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[qualified]


def test_reference_lists_every_public_name_once():
    pages = _load("api_pages").pages()
    listed = [name for _, _, _, names in pages for name in names]
    assert sorted(listed) == sorted(perceptloss.__all__)
    assert len(listed) == len(set(listed))


def test_reference_names_come_from_their_modules():
    for name, module in _load("api_pages").public_names():
        obj = getattr(perceptloss, name)
        if module and hasattr(obj, "__module__") and not isinstance(obj, type(perceptloss)):
            # a re-export is documented on the page of the module it is imported from
            assert obj.__module__.startswith(f"perceptloss.{module.split('.')[0]}"), (name, module, obj.__module__)


def test_docstring_rewrites():
    pytest.importorskip("griffe")
    style = _load("griffe_torch_style")
    assert style.rst_math_to_arithmatex("a\n\n.. math:: x^2\n\nb :math:`y` c") == "a\n\n\\[ x^2 \\]\n\nb \\(y\\) c"
    assert style.xref_roles_to_code(":class:`ChannelPolicy` and :func:`~torch.nn.functional.mse_loss`") == (
        "`ChannelPolicy` and `mse_loss`")
    assert style.escape_placeholders('"timm:<model>" and `<kept>`') == '"timm:&lt;model&gt;" and `<kept>`'
    text = "Args:\n    a, b: shared.\n        more.\n    c: own.\n"
    assert style.split_grouped_args(text) == "Args:\n    a: shared.\n        more.\n    b: See `a`.\n    c: own.\n"


# -- the options tables (docs/tools/loss_options.py) --------------------------------------------------------

LOSSES = ("FeatureLoss", "StyleLoss", "LPIPS", "DISTS")


def test_options_read_from_the_source_are_loss_options():
    """The docs read LossOptions without importing it: the same names, in order, with the same documentation."""
    import typing

    rows = _load("loss_options").read_options()
    hints = typing.get_type_hints(perceptloss.LossOptions, include_extras=True)
    assert [r.name for r in rows] == list(hints)
    for row in rows:
        option = typing.get_args(hints[row.name])[1]
        assert (row.default, row.kind, row.doc) == (option.default, option.kind, option.doc), row.name


@pytest.mark.parametrize("name", LOSSES)
def test_options_table_types_and_defaults_are_the_signatures(name):
    """Each row of a loss's table says what ``inspect.signature`` says: the type as written there, and the
    default, with the loss's own defaults (LPIPS' and DISTS' ``reduction="none"``)."""
    import inspect

    tools = _load("loss_options")
    params = inspect.signature(getattr(perceptloss, name)).parameters
    rows = tools.read_options()
    overrides = {r.name: params[r.name].default for r in rows if params[r.name].default != r.default}
    table = tools.options_table(overrides)
    for row in rows:
        assert row.type == params[row.name].annotation, row.name
        assert f"| `{row.name}` | `{row.type}` | `{params[row.name].default!r}` |" in table, row.name


def test_options_table_refuses_an_unknown_override():
    with pytest.raises(ValueError, match="LossOptions does not have"):
        _load("loss_options").options_table({"reductoin": "none"})


# -- the API reference's pages (docs/tools/api_pages.py) -----------------------------------------------------

def test_internal_names_left_out_of_the_reference_exist():
    """Each name the reference leaves out as internal is still exported where the list says (else the list rots)."""
    import importlib

    for module, names in _load("api_pages").INTERNAL.items():
        imported = importlib.import_module(module)
        for name in names:
            assert hasattr(imported, name), f"{module}.{name} is gone: remove it from api_pages.INTERNAL"
            assert name not in perceptloss.__all__


def test_docstring_example_rewrites():
    pytest.importorskip("griffe")
    style = _load("griffe_torch_style")
    assert style.example_sections("Text.\n\nExample:\n    >>> 1\n    1\n") == "Text.\n\nExamples:\n    >>> 1\n    1\n"
    # a doctest outside an Examples section (a module docstring's) is fenced; inside one it is left to griffe
    assert style.fence_doctests("Text.\n\n>>> x = 1\n>>> x\n1\n\nMore.") == (
        "Text.\n\n```pycon\n>>> x = 1\n>>> x\n1\n```\n\nMore.")
    inside = "Examples:\n    >>> x = 1\n\nText."
    assert style.fence_doctests(inside) == inside
    doc = "Summary.\n\nShape:\n    - x: (N,)\n"
    assert style.with_options_section(doc, "Options:\n    table") == (
        "Summary.\n\nOptions:\n    table\n\nShape:\n    - x: (N,)\n")


# -- formulas (docs/tools/math_mathml.py) --------------------------------------------------------------------

def test_formulas_become_mathml():
    pytest.importorskip("latex2mathml")
    math = _load("math_mathml")
    page = ('<p>a <span class="arithmatex">\\(x^2 &lt; y\\)</span></p>'
            '<div class="arithmatex">\\[ \\frac{a}{b} \\]</div>')
    out = math.render_math(page, "page.md")
    assert "arithmatex" not in out and "\\(" not in out and "\\[" not in out
    assert out.count("<math") == 2 and 'display="block"' in out and "<mfrac>" in out
    with pytest.raises(ValueError, match="nosuchcommand"):
        math.render_math('<span class="arithmatex">\\(\\nosuchcommand x\\)</span>', "page.md")


# -- the command-line page (docs/tools/cli_page.py) ----------------------------------------------------------

#: The metric table as a fresh process has it (this module is imported at collection, before any test registers
#: a metric: the docs examples and register_metric's doctest do, and the table is one per process).
_METRICS_AT_START = dict(perceptloss.metric_table._ENTRIES)


def test_cli_page_matches_the_parsers(monkeypatch):
    """docs/cli.md is what docs/tools/cli_page.py makes of the parsers (in a fresh process: the built-in
    metrics only); after a change to the command line, regenerate it with the command the failure prints."""
    cli_page = _load("cli_page")
    monkeypatch.setenv("COLUMNS", str(cli_page.WIDTH))
    monkeypatch.setattr(perceptloss.metric_table, "_ENTRIES", dict(_METRICS_AT_START))
    expected = cli_page.render(cli_page.build_parser())
    assert cli_page.PAGE.read_text(encoding="utf-8") == expected, (
        "docs/cli.md does not match the command line's parsers: run .venv-test/bin/python docs/tools/cli_page.py")
    for name in ("list", "layers", "weights", "fetch", "verify", "info", "score"):
        assert f"\n## {name}\n" in expected


# -- the benchmarks page (docs/tools/benchmark_pages.py) -----------------------------------------------------

def _result(folder: Path, name: str, rows: str = "| a | 1 |", header: str = "- CPU: Test CPU\n- CPU flags: AVX2 yes") -> None:
    (folder / name).write_text(f"# title\n\n{header}\n\nReproduce: `run it`\n\n## 1. Section\n\n"
                               f"| case | ms |\n|---|---|\n{rows}\n\nA note. About \"gradient cache off\" too.\n")


def test_benchmark_page_shows_the_latest_files_per_machine(tmp_path):
    pages = _load("benchmark_pages")
    _result(tmp_path, "cpu-2026-01-01-loss.md")                               # older: not shown
    _result(tmp_path, "cpu-2026-02-01-zen5-loss.md")                          # superseded by -shuffled
    _result(tmp_path, "cpu-2026-02-01-zen5-loss-shuffled.md", rows="| a | 1 |\n| fused, gradient cache off | 2 |")
    _result(tmp_path, "cpu-2026-02-01-zen5-emulated-avx2-loss.md",
            header="- CPU: Test CPU\n- CPU flags: AVX2 yes\n- EMULATED: yes\n- ATen CPU capability: AVX2")
    _result(tmp_path, "cpu-2026-03-01-zen5-operator-streaming.md")            # an experiment: skipped
    _result(tmp_path, "cpu_knobs_native.md")                                  # not the naming convention
    shown = [f.path.name for f in pages.latest(pages.result_files(tmp_path), "loss")]
    assert shown == ["cpu-2026-02-01-zen5-loss-shuffled.md", "cpu-2026-02-01-zen5-emulated-avx2-loss.md"]
    assert pages.latest(pages.result_files(tmp_path), "operator") == []
    text = pages.render(tmp_path)
    assert "#### 2026-02-01 · zen5" in text and 'Machine: Test CPU; AVX2 yes"' in text
    assert "EMULATED (ATen AVX2)" in text and "Reproduce: `run it`" in text
    assert "gradient cache off" not in text.split("Rows about settings")[0]   # rows and notes of deleted settings
    assert "A note." in text and "2026-01-01" not in text


def test_benchmark_page_renders_the_repository_results():
    pages = _load("benchmark_pages")
    text = pages.render()
    for kind, title, _ in pages.KINDS:
        if pages.latest(pages.result_files(), kind):
            assert f"### {title}" in text
    assert text.count("#### ") >= 5 and "Reproduce:" in text


# -- Getting started ------------------------------------------------------------------------------------------

def test_getting_started_names_every_weight_and_its_file():
    """The page that says which weights ship where names every catalogued group and every file to put in place."""
    from perceptloss import weights

    page = (TOOLS.parents[0] / "getting-started.md").read_text(encoding="utf-8")
    for group in weights.weight_groups():
        assert f"`{group}." in page, group
    for entry in weights.list_weight_entries():
        if entry.url:
            assert Path(entry.url).name in page, entry.key
