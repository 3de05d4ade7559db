"""A file a user passes is data, never code: no loader runs a pickle's code, and nothing in the repository unpickles.

Issue 28, item 1: a crafted ``.pth`` whose pickle calls ``os.system`` must fail to load without running it, in every
constructor that takes a weights file; and no code in the repository calls ``torch.load`` without
``weights_only=True`` (or ``pickle.load`` / ``np.load(allow_pickle=True)``) on a file.
"""
import ast
import os
import shlex
from pathlib import Path

import pytest
import torch

import perceptloss

ROOT = Path(__file__).resolve().parents[1]


class RunsCode:
    """Pickles as a call of ``os.system`` that creates ``marker``: loading it with pickle runs that command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def crafted_file(folder: Path) -> tuple[Path, Path]:
    """A torch file of plausible weights plus an object whose unpickling runs a command; and that command's marker."""
    marker = folder / "code-ran"
    path = folder / "weights.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "payload": RunsCode(marker)}, path)
    return path, marker


def test_the_crafted_file_does_run_code_when_unpickled(tmp_path):
    path, marker = crafted_file(tmp_path)
    torch.load(path, weights_only=False)  # what a loader must never do: the command runs
    assert marker.exists()


@pytest.mark.parametrize("build", [
    lambda p: perceptloss.FeatureLoss("vgg19", ["relu1_1"], weights=p),
    lambda p: perceptloss.create_backbone("vgg19", ["relu1_1"], p),
    lambda p: perceptloss.LPIPS("alex", weights=None, heads=p),
    lambda p: perceptloss.DISTS(weights=None, alpha_beta=p),
], ids=["FeatureLoss", "create_backbone", "LPIPS-heads", "DISTS-alpha_beta"])
def test_the_library_refuses_a_weights_file_that_would_run_code(tmp_path, build):
    path, marker = crafted_file(tmp_path)
    with pytest.raises(Exception):
        build(path)
    assert not marker.exists(), "loading a user's weights file ran code from its pickle"


def _python_files():
    for folder in ("perceptloss", "examples", "tests", "benchmarks", "scripts"):
        yield from sorted((ROOT / folder).rglob("*.py"))
    yield from sorted(ROOT.glob("*.py"))


def _unpickling_calls(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        if name == "torch.load" or name.endswith(".torch.load"):
            value = keywords.get("weights_only")
            if not (isinstance(value, ast.Constant) and value.value is True):
                found.append((node.lineno, f"{ast.unparse(node)} (torch.load without weights_only=True)"))
        elif name in ("pickle.load", "pickle.Unpickler", "cPickle.load", "dill.load", "joblib.load"):
            found.append((node.lineno, f"{ast.unparse(node)} (unpickles a file)"))
        elif name.endswith("np.load") or name.endswith("numpy.load"):
            value = keywords.get("allow_pickle")
            if isinstance(value, ast.Constant) and value.value is True:
                found.append((node.lineno, f"{ast.unparse(node)} (np.load with allow_pickle=True)"))
    return found


def test_nothing_in_the_repository_unpickles_a_file():
    offenders = []
    for path in _python_files():
        if path == Path(__file__).resolve():
            continue  # this file's own demonstration above
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        offenders += [f"{path.relative_to(ROOT)}:{line}: {what}" for line, what in _unpickling_calls(tree)]
    assert not offenders, "files are data, never code; load them with weights_only=True or safetensors:\n" + \
        "\n".join(offenders)
