"""``.signature``: one key:value|... line per loss, and the promise it makes: same signature <=> comparable numbers.

Every field is tested by changing what it states (the values change, and so does that field, and no field that
has nothing to do with the change), and every change that leaves the values as they are (how the weights were
passed, a normalization's name, the reduction, exact tiling, Python or the command line) leaves the signature
as it is. docs/evaluation.md lists the fields; a test checks that every field a signature has is listed there.
"""
from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import perceptloss
from perceptloss import DISTS, LPIPS, FeatureLoss, Normalization, StyleLoss, VolumeLoss, create_metric, tiled
from perceptloss._signature import parse_signature, tensors_digest
from perceptloss.criteria import Criterion
from perceptloss.hardware import SlowPrecisionWarning
from perceptloss.preprocessing import IMAGENET

from .helpers import TinyNet, relative, tiny_loss

SHARED_KEYS = ["range", "channels", "dtype", "perceptloss", "torch"]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "evaluation.md"


def seeded(make, seed=0):
    torch.manual_seed(seed)
    return make()


def images(size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, size, size, generator=g), torch.rand(2, 3, size, size, generator=g)


def changed_fields(a: str, b: str) -> set[str]:
    fa, fb = parse_signature(a), parse_signature(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


# ------------------------------------------------------------------------------------------------- the format


@pytest.mark.parametrize("make, metric, keys", [
    (lambda: FeatureLoss("vgg19", "dfc123", weights=None), "FeatureLoss",
     ["net", "arch", "sha256", "norm", "layers", "layer_weights", "distance"]),
    (lambda: StyleLoss(weights=None), "StyleLoss", ["net", "arch", "sha256", "norm", "layers", "layer_weights", "distance"]),
    (lambda: LPIPS("squeeze", "0.0", weights=None), "LPIPS",
     ["net", "arch", "sha256", "norm", "layers", "version", "heads_sha256", "distance", "spatial"]),
    (lambda: DISTS(weights=None), "DISTS",
     ["net", "arch", "sha256", "norm", "layers", "alpha_beta_sha256", "distance"]),
])
def test_fields_in_order(make, metric, keys):
    sig = make().signature
    assert "\n" not in sig
    fields = parse_signature(sig)
    assert list(fields) == ["metric", *keys, *SHARED_KEYS]
    assert fields["metric"] == metric
    assert fields["perceptloss"] == perceptloss.__version__ and fields["torch"] == torch.__version__
    assert len(fields["sha256"]) == 12 and len(fields["arch"]) == 12


def test_values_of_the_fields(caffe_weights):
    loss = FeatureLoss("vgg19", ["relu1_1", "relu2_1"], layer_weights=[1.0, 0.25], input_range=(-1, 1))
    f = parse_signature(loss.signature)
    assert f["net"] == "vgg19" and f["norm"] == "caffe" and "weights" not in f
    assert loss.weights_source == "vgg19.caffe"  # provenance, outside the signature
    assert f["layers"] == "relu1_1,relu2_1" and f["layer_weights"] == "1,0.25" and f["distance"] == "l2"
    assert f["range"] == "-1,1" and f["channels"] == "rgb" and f["dtype"] == "float32"
    assert f["sha256"] == tensors_digest(loss.net.weight_tensors())
    lp = parse_signature(LPIPS("alex", weights=None, heads="default").signature)
    assert lp["net"] == "alex" and lp["version"] == "0.1" and lp["spatial"] == "no"
    assert lp["norm"] == "imagenet"  # LPIPS' scaling layer is the ImageNet mean/std exactly: named by its values
    assert parse_signature(LPIPS("alex", "0.0", weights=None).signature)["norm"] == "lpips-v0.0"
    ones = parse_signature(LPIPS("alex", weights=None, heads=None).signature)["heads_sha256"]
    assert ones != lp["heads_sha256"]
    vol = parse_signature(VolumeLoss(FeatureLoss(weights=None, reduction="none"), axes=(2,), stride=2).signature)
    assert vol["metric"] == "VolumeLoss" and vol["axes"] == "2" and vol["stride"] == "2"
    assert vol["slice_metric"] == "FeatureLoss" and "reduction" not in vol and "slice_reduction" not in vol


def test_a_custom_normalization_is_recorded_by_its_values():
    make = lambda norm: parse_signature(tiny_loss(TinyNet()).signature if norm is None else FeatureLoss(
        TinyNet(), ["act1", "act2"], normalization=norm).signature)["norm"]
    assert make(None) == "identity"
    assert make(Normalization((0.5, 0.5, 0.5), (0.25, 0.5, 1), scale=255, bgr=True, name="mine")) == \
        "bgr/scale=255/mean=0.5,0.5,0.5/std=0.25,0.5,1"
    assert make(Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))) == "rgb/scale=1/mean=0,0,0/std=1,1,1"
    assert make(Normalization(IMAGENET.mean, IMAGENET.std, name="anything")) == "imagenet"
    assert make(Normalization((0.5, 0.456, 0.406), IMAGENET.std, name="imagenet")).startswith("rgb/")


def test_every_field_is_documented():
    """docs/evaluation.md's table of fields names every field any signature has (and the CLI's two)."""
    first_cells = re.findall(r"^\| (`[^|]+`) \|", DOCS.read_text(), flags=re.M)  # the table's field column
    documented = {key for cell in first_cells for key in re.findall(r"`([a-z_0-9]+)`", cell)}
    net = TinyNet()
    signatures = [
        FeatureLoss("vgg19", "dfc123", weights=None).signature, StyleLoss(weights=None).signature,
        LPIPS("alex", weights=None).signature, DISTS(weights=None).signature,
        VolumeLoss(FeatureLoss("vgg19", "dfc123", weights=None, reduction="none"), axes=(2,)).signature,
        tiled(tiny_loss(net), tile=128, halo=8).signature,
    ]
    keys = {k for s in signatures for k in parse_signature(s)} | {"resize", "crop"}
    assert keys - documented == set()
    assert "tile" in keys and "slice_metric" in keys


# ------------------------------------------------------------------------------- a change changes its field


class ActNet(nn.Module):
    """TinyNet's layers with the activation as a module given to the constructor."""

    def __init__(self, act: nn.Module, stride: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = act
        self.conv2 = nn.Conv2d(4, 6, 3, stride=stride, padding=1)

    def forward(self, x):
        return self.conv2(self.act1(self.conv1(x)))


class FnNet(nn.Module):
    """The activation as a plain function attribute, called in forward (not a submodule: not in its repr)."""

    def __init__(self, fn):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.fn = fn
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv2(self.fn(self.conv1(x)))


class Huber(Criterion):
    """A criterion of the user's: its default signature field names its class and ``extra_repr``."""

    tiling = "local"

    def __init__(self, delta: float):
        super().__init__()
        self.delta = delta

    def compare(self, a, b):
        return torch.stack([F.huber_loss(x, y, delta=self.delta, reduction="none").flatten(1).mean(1)
                            for x, y in zip(a, b)], dim=1)

    def extra_repr(self):
        return f"delta={self.delta}"


def tiny(net=None, layers=("act1", "act2"), **kw):
    """A FeatureLoss over a seeded TinyNet (or ``net``), ImageNet preprocessing, one value per image."""
    if net is None:
        torch.manual_seed(0)
        net = TinyNet()
    options = {"layer_weights": [1.0, 0.5][: len(layers)], "normalization": IMAGENET, "reduction": "none", **kw}
    return FeatureLoss(net, list(layers), **options)


def module_with(make):
    torch.manual_seed(0)
    return make()


def changed_weight():
    torch.manual_seed(0)
    net = TinyNet()
    with torch.no_grad():
        net.conv1.weight[0, 0, 0, 0] += 1e-3
    return tiny(net)


def lpips(**kw):
    return seeded(lambda: LPIPS("alex", weights=None, **kw))


# (field that must change, the base loss, the changed loss, other fields that change with it)
CHANGES = [
    ("layers", tiny, lambda: tiny(layers=("act2",)), {"layer_weights", "arch"}),  # a shorter traced forward
    ("layer_weights", tiny, lambda: tiny(layer_weights=[1.0, 0.25]), set()),
    ("distance", tiny, lambda: tiny(distance="l1"), set()),
    ("distance", lambda: tiny(distance="charbonnier"), lambda: tiny(distance="charbonnier", charbonnier_eps=1e-1),
     set()),
    ("distance", lambda: tiny(distance=Huber(1.0), layer_weights=None),
     lambda: tiny(distance=Huber(0.01), layer_weights=None), set()),
    ("range", tiny, lambda: tiny(input_range=(0, 2)), set()),
    ("channels", tiny, lambda: tiny(channels="per_channel"), set()),
    ("norm", tiny, lambda: tiny(normalization=Normalization((0.4, 0.456, 0.406), IMAGENET.std)), set()),
    ("norm", tiny, lambda: tiny(normalization=Normalization(IMAGENET.mean, (0.2, 0.224, 0.225))), set()),
    ("norm", tiny, lambda: tiny(normalization=Normalization(IMAGENET.mean, IMAGENET.std, bgr=True)), set()),
    ("norm", tiny, lambda: tiny(normalization=Normalization(IMAGENET.mean, IMAGENET.std, scale=2.0)), set()),
    ("norm", lambda: tiny(normalization=Normalization((0.5,) * 3, (0.5,) * 3)),  # two unnamed ones
     lambda: tiny(normalization=Normalization((0.5,) * 3, (0.25,) * 3)), set()),
    ("norm", tiny, lambda: tiny(normalization=Normalization((0.5,) * 3, (0.5,) * 3, name="imagenet")), set()),
    ("dtype", tiny, lambda: tiny(dtype=torch.bfloat16), {"sha256"}),  # the tensors are bfloat16 now
    ("sha256", tiny, changed_weight, set()),
    ("arch", lambda: tiny(module_with(lambda: ActNet(nn.ReLU())), layers=("act1", "conv2")),
     lambda: tiny(module_with(lambda: ActNet(nn.GELU())), layers=("act1", "conv2")), set()),
    ("arch", lambda: tiny(module_with(lambda: FnNet(F.relu)), layers=("conv1", "conv2")),
     lambda: tiny(module_with(lambda: FnNet(F.gelu)), layers=("conv1", "conv2")), set()),
    ("arch", lambda: tiny(module_with(lambda: ActNet(nn.ReLU())), layers=("act1", "conv2")),
     lambda: tiny(module_with(lambda: ActNet(nn.ReLU(), stride=1)), layers=("act1", "conv2")), set()),
    ("version", lpips, lambda: lpips(version="0.0"), {"norm", "heads_sha256"}),
    ("heads_sha256", lpips, lambda: lpips(heads=None), set()),
]


@pytest.mark.parametrize("field, make_base, make_other, also", CHANGES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CHANGES)])
def test_a_change_of_the_values_changes_its_field(field, make_base, make_other, also):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowPrecisionWarning)  # bfloat16 where this CPU emulates it
        base, other = make_base(), make_other()
    assert field in changed_fields(base.signature, other.signature)
    assert changed_fields(base.signature, other.signature) <= {field} | also
    x, y = images(64)
    with torch.no_grad():
        a, b = base(x, y), other(x, y)
    assert a.shape == b.shape and relative(b.double(), a.double()) > 1e-6  # the numbers did change


def test_spatial_maps_and_values_differ_in_the_spatial_field():
    assert changed_fields(lpips().signature, lpips(spatial=True).signature) == {"spatial"}


def test_a_halo_the_user_vouches_for_is_recorded():
    """tiled() on a network perceptloss cannot analyse takes the user's halo on trust: the signature says so."""
    loss = tiny(module_with(lambda: ActNet(nn.ReLU())), layers=("act1", "conv2"))
    fields = parse_signature(tiled(loss, tile=128, halo=8).signature)
    assert fields["tile"] == "128/halo=8" and list(fields)[:2] == ["metric", "tile"]
    assert {k: v for k, v in fields.items() if k != "tile"} == parse_signature(loss.signature)


# ----------------------------------------------------------------------- the same values, the same signature


def test_the_same_tensors_however_passed_give_one_signature(tmp_path):
    """Random init, a .pth, the same tensors in a .safetensors, a renamed copy elsewhere: one signature, one number."""
    from safetensors.torch import save_file

    make = lambda weights, **kw: FeatureLoss("vgg16", "dfc123", weights=weights, reduction="none", **kw)
    random = seeded(lambda: make(None))
    tensors = {k: v.clone().contiguous() for k, v in random.net.weight_tensors().items()}
    torch.save(tensors, tmp_path / "trunk.pth")
    save_file(tensors, str(tmp_path / "trunk.safetensors"))
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(tmp_path / "trunk.pth", tmp_path / "elsewhere" / "my-copy.pth")
    losses = [random] + [make(tmp_path / name, normalization="imagenet")
                         for name in ("trunk.pth", "trunk.safetensors", "elsewhere/my-copy.pth")]
    assert [loss.weights_source for loss in losses] == [
        "random", "file:trunk.pth", "file:trunk.safetensors", "file:my-copy.pth"]
    assert len({loss.signature for loss in losses}) == 1
    x, y = images(32)
    with torch.no_grad():
        values = [loss(x, y) for loss in losses]
    assert all(torch.equal(v, values[0]) for v in values)


def test_a_catalogue_entry_and_its_files_give_one_signature(caffe_weights, tmp_path):
    """The entry, the cached .safetensors by path, a renamed copy of it and a .pth of its tensors: one signature."""
    from perceptloss.backbones.vgg import VGG19_CAFFE
    from perceptloss.weights import cache_path

    entry = FeatureLoss("vgg19", "dfc123", reduction="none")
    cached = cache_path(VGG19_CAFFE)
    shutil.copy(cached, tmp_path / "renamed.safetensors")
    torch.save({k: v.clone() for k, v in entry.net.weight_tensors().items()}, tmp_path / "resaved.pth")
    losses = [entry, FeatureLoss("vgg19", "dfc123", weights=cached, reduction="none"),
              FeatureLoss("vgg19", "dfc123", weights=tmp_path / "renamed.safetensors", reduction="none"),
              FeatureLoss("vgg19", "dfc123", weights=tmp_path / "resaved.pth", normalization="caffe", reduction="none")]
    assert len({loss.weights_source for loss in losses}) == 4
    assert len({loss.signature for loss in losses}) == 1
    x, y = images(32)
    with torch.no_grad():
        values = [loss(x, y) for loss in losses]
    assert all(torch.equal(v, values[0]) for v in values)


def vgg():
    return seeded(lambda: FeatureLoss("vgg19", ["relu1_1", "relu2_1"], weights=None, reduction="none"))


def shared(**kw):
    return tiny(module_with(TinyNet).eval(), share_module=True, **kw)


def python_and_cli():
    """The loss a user builds and ``create_metric``'s (the CLI's) for the same name: one signature."""
    return (seeded(lambda: FeatureLoss("vgg16", "lpips", weights=None)),
            seeded(lambda: create_metric("vgg16:lpips", weights=None)))


# pairs of losses that compute the same per-image values
SAME = {
    "normalization name": lambda: (tiny(), tiny(normalization=Normalization(IMAGENET.mean, IMAGENET.std, name="mine"))),
    "two unnamed normalizations": lambda: (tiny(normalization=Normalization((0.5,) * 3, (0.5,) * 3)),
                                           tiny(normalization=Normalization((0.5,) * 3, (0.5,) * 3))),
    "a shared module and a copy": lambda: (tiny(module_with(TinyNet)), shared()),
    "exact tiling": lambda: (vgg(), tiled(vgg(), tile=32)),
    "python and the command line": python_and_cli,
}


@pytest.mark.parametrize("name", list(SAME))
def test_what_leaves_the_values_leaves_the_signature(name):
    a, b = SAME[name]()
    assert a.signature == b.signature
    x, y = images(40)
    with torch.no_grad():
        va, vb = a(x, y), b(x, y)
    if va.shape != vb.shape:  # a loss's default reduction="mean" and the CLI's per-image values
        va, vb = va.mean(), vb.mean()
    assert relative(vb, va) < 1e-6  # float32 rounding at most (tiles sum in another order)


def test_the_reduction_is_stated_beside_the_signature():
    """The signature describes one pair's value: "none", "mean" and "sum" aggregate the same values."""
    per_image, mean, total = tiny(), tiny(reduction="mean"), tiny(reduction="sum")
    assert per_image.signature == mean.signature == total.signature
    x, y = images(32)
    with torch.no_grad():
        values = per_image(x, y)
        assert relative(mean(x, y), values.mean()) < 1e-6 and relative(total(x, y), values.sum()) < 1e-6


def test_same_computation_same_signature():
    a = seeded(lambda: FeatureLoss("vgg19", "dfc123", weights=None))
    b = seeded(lambda: FeatureLoss("vgg19", ["relu1_1", "relu2_1", "relu3_1"], weights=None, layer_weights=[1, 1, 1]))
    assert a.signature == b.signature
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x, y), b(x, y))


def test_a_shared_module_in_train_mode_is_another_computation():
    """A shared module computes as its owner's mode says (batch norm: batch statistics in train mode)."""
    class BNNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))

    module = module_with(BNNet)
    loss = FeatureLoss(module, ["bn"], reduction="none", share_module=True)
    x, y = images(16)
    module.eval()
    with torch.no_grad():
        eval_signature, eval_values = loss.signature, loss(x, y)
        module.train()
        train_values = loss(x, y)
    assert changed_fields(eval_signature, loss.signature) == {"arch"}
    assert relative(train_values, eval_values) > 1e-3


# ------------------------------------------------------------------------ the dtype the network computed in


def test_autocast_is_recorded_as_the_dtype_computed_in():
    """CPU bfloat16 autocast changes the values: the signature says so, also when read after the block."""
    loss = lpips()
    x, y = images(64)
    with torch.no_grad():
        plain = loss(x, y)
        assert parse_signature(loss.signature)["dtype"] == "float32"
        fresh = lpips()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert parse_signature(fresh.signature)["dtype"] == "bfloat16/autocast"  # what a call would use now
            cast = fresh(x, y)
        assert parse_signature(fresh.signature)["dtype"] == "bfloat16/autocast"  # what the latest call used
        assert relative(cast, plain) > 1e-4  # the numbers it describes are other numbers
        assert changed_fields(loss.signature, fresh.signature) == {"dtype"}
        assert torch.equal(fresh(x, y), plain) and fresh.signature == loss.signature  # a plain call again


def test_autocast_leaves_a_float64_loss_alone():
    loss = lpips(dtype=torch.float64)
    x, y = (t.double() for t in images(64))
    with torch.no_grad():
        plain = loss(x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast = loss(x, y)
    assert torch.equal(cast, plain) and parse_signature(loss.signature)["dtype"] == "float64"


def test_a_move_or_cast_forgets_the_latest_call():
    loss = tiny()
    x, y = images(32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        loss(x, y)
    assert loss.compute_dtype == "bfloat16/autocast"
    loss.double()
    assert loss.compute_dtype == "float64" and parse_signature(loss.signature)["dtype"] == "float64"


def test_wrappers_state_the_dtype_their_loss_computed_in():
    pytest.importorskip("torchmetrics")
    from perceptloss.metric import PerceptualMetric

    x, y = images(64)
    metric, tiles = PerceptualMetric(lpips()), tiled(vgg(), tile=32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        metric.update(x, y)
        tiles(x, y)
    assert parse_signature(metric.signature)["dtype"] == parse_signature(tiles.signature)["dtype"] == "bfloat16/autocast"


def test_tensorfloat32_convolutions_are_a_dtype_of_their_own(monkeypatch):
    """CUDA float32 convolutions run in TF32 on compute capability >= 8.0 when cuDNN allows it (torch's default)."""
    from perceptloss._dtypes import compute_dtype

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
        assert compute_dtype(torch.float32, cuda) == "float32/tf32"
        assert compute_dtype(torch.bfloat16, cuda) == "bfloat16" and compute_dtype(torch.float64, cuda) == "float64"
        assert compute_dtype(torch.float32, torch.device("cpu")) == "float32"
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        if not torch.backends.cuda.matmul.allow_tf32:
            assert compute_dtype(torch.float32, cuda) == "float32"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert compute_dtype(torch.float32, cuda) == "float32"  # Volta, Turing: no TF32
