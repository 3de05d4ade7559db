"""The docs build's own code (docs/tools/): the API reference lists exactly ``perceptloss.__all__``, each name on
one page, and the docstring rewrites that let torch-style docstrings render (the strict build itself is
``make docs``, which CI runs)."""
import importlib.util
from pathlib import Path

import pytest

import perceptloss

TOOLS = Path(__file__).resolve().parents[1] / "docs" / "tools"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
