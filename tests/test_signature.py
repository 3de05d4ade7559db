"""``.signature``: one key:value|... line per loss; equal for losses that compute the same numbers, a differing
field for every option that changes them; the sha256 fields hash the weight tensors as loaded."""
from __future__ import annotations

import pytest
import torch

import perceptloss
from perceptloss import DISTS, LPIPS, FeatureLoss, StyleLoss, VolumeLoss
from perceptloss._signature import parse_signature, tensors_digest

from .helpers import TinyNet, tiny_loss

SHARED_KEYS = ["range", "channels", "reduction", "dtype", "perceptloss", "torch"]


def seeded(make, seed=0):
    torch.manual_seed(seed)
    return make()


@pytest.mark.parametrize("make, metric, keys", [
    (lambda: FeatureLoss("vgg19", "dfc123", weights=None), "FeatureLoss",
     ["net", "weights", "sha256", "norm", "layers", "layer_weights", "distance"]),
    (lambda: StyleLoss(weights=None), "StyleLoss", ["net", "weights", "sha256", "norm", "layers", "layer_weights", "distance"]),
    (lambda: LPIPS("squeeze", "0.0", weights=None), "LPIPS",
     ["net", "weights", "sha256", "norm", "layers", "version", "heads_sha256", "distance", "spatial"]),
    (lambda: DISTS(weights=None), "DISTS", ["net", "weights", "sha256", "norm", "layers", "alpha_beta_sha256", "distance"]),
])
def test_fields_in_order(make, metric, keys):
    sig = make().signature
    assert "\n" not in sig
    fields = parse_signature(sig)
    assert list(fields) == ["metric", *keys, *SHARED_KEYS]
    assert fields["metric"] == metric
    assert fields["perceptloss"] == perceptloss.__version__ and fields["torch"] == torch.__version__
    assert fields["weights"] == "random" and len(fields["sha256"]) == 12


def test_values_of_the_fields(caffe_weights):
    loss = FeatureLoss("vgg19", ["relu1_1", "relu2_1"], layer_weights=[1.0, 0.25], input_range=(-1, 1))
    f = parse_signature(loss.signature)
    assert f["net"] == "vgg19" and f["weights"] == "vgg19.caffe" and f["norm"] == "caffe"
    assert f["layers"] == "relu1_1,relu2_1" and f["layer_weights"] == "1,0.25" and f["distance"] == "l2"
    assert f["range"] == "-1,1" and f["channels"] == "rgb" and f["reduction"] == "mean" and f["dtype"] == "float32"
    assert f["sha256"] == tensors_digest(loss.net.weight_tensors())
    lp = parse_signature(LPIPS("alex", weights=None, heads="default").signature)
    assert lp["net"] == "alex" and lp["version"] == "0.1" and lp["norm"] == "lpips" and lp["spatial"] == "no"
    ones = parse_signature(LPIPS("alex", weights=None, heads=None).signature)["heads_sha256"]
    assert ones != lp["heads_sha256"]
    vol = parse_signature(VolumeLoss(FeatureLoss(weights=None, reduction="none"), axes=(2,), stride=2).signature)
    assert vol["metric"] == "VolumeLoss" and vol["axes"] == "2" and vol["stride"] == "2"
    assert vol["slice_metric"] == "FeatureLoss" and vol["slice_reduction"] == "none"


def test_same_computation_same_signature():
    a = seeded(lambda: FeatureLoss("vgg19", "dfc123", weights=None))
    b = seeded(lambda: FeatureLoss("vgg19", ["relu1_1", "relu2_1", "relu3_1"], weights=None, layer_weights=[1, 1, 1]))
    assert a.signature == b.signature
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x, y), b(x, y))


@pytest.mark.parametrize("kwargs, field", [
    (dict(layers="dfc345"), "layers"),
    (dict(layer_weights=[1, 2, 1]), "layer_weights"),
    (dict(distance="l1"), "distance"),
    (dict(distance="charbonnier", charbonnier_eps=1e-2), "distance"),
    (dict(reduction="sum"), "reduction"),
    (dict(input_range=(0, 255)), "range"),
    (dict(channels="replicate"), "channels"),
    (dict(normalization="caffe"), "norm"),
    (dict(dtype=torch.float64), "dtype"),
])
def test_every_option_that_changes_numbers_changes_a_field(kwargs, field):
    base = parse_signature(seeded(lambda: FeatureLoss("vgg19", weights=None)).signature)
    other = parse_signature(seeded(lambda: FeatureLoss("vgg19", weights=None, **{"layers": "dfc123", **kwargs})).signature)
    assert base[field] != other[field]
    assert {k for k in base if base[k] != other.get(k)} <= {field, "sha256"}  # dtype and deeper layers change the tensors


def test_sha256_hashes_the_tensors_not_the_file(tmp_path):
    """The same tensors from a .pth and a .safetensors file give the same sha256; one changed weight changes it."""
    from safetensors.torch import save_file

    net = TinyNet()
    state = {f"features.{k}": v for k, v in net.state_dict().items()}
    del state
    loss_a = tiny_loss(net)
    sha = parse_signature(loss_a.signature)["sha256"]
    assert sha == tensors_digest(dict(loss_a.net.weight_tensors()))
    import torchvision

    torch.manual_seed(0)
    features = {k: v for k, v in torchvision.models.vgg16().state_dict().items() if k.startswith("features.")}
    torch.save(features, tmp_path / "trunk.pth")
    save_file({k: v.contiguous() for k, v in features.items()}, str(tmp_path / "trunk.safetensors"))
    a = FeatureLoss("vgg16", "dfc123", weights=tmp_path / "trunk.pth", normalization="imagenet")
    b = FeatureLoss("vgg16", "dfc123", weights=tmp_path / "trunk.safetensors", normalization="imagenet")
    fa, fb = parse_signature(a.signature), parse_signature(b.signature)
    assert fa["sha256"] == fb["sha256"]
    assert fa["weights"] == "file:trunk.pth" and fb["weights"] == "file:trunk.safetensors"
    features["features.0.weight"][0, 0, 0, 0] += 1e-3
    torch.save(features, tmp_path / "trunk.pth")
    c = FeatureLoss("vgg16", "dfc123", weights=tmp_path / "trunk.pth", normalization="imagenet")
    assert parse_signature(c.signature)["sha256"] != fa["sha256"]


def test_module_backbone_and_dtype_follow_the_loss():
    loss = tiny_loss(TinyNet(), share_module=True)
    f = parse_signature(loss.signature)
    assert f["net"] == "TinyNet" and f["weights"] == "shared-module:TinyNet" and f["norm"] == "identity"
    loss.double()
    assert parse_signature(loss.signature)["dtype"] == "float64"
