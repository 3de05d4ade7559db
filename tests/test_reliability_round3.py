"""Issue 28, the library items: each test reproduces one failure of the audit and checks the rule behind it.

item 2   test_item2_finite_gradients_in_16_bits: every loss, float16 and bfloat16 (dtype= and autocast),
         identical, black and constant inputs: finite values and gradients.
also     test_dists_of_identical_images_is_zero, test_dists_refuses_images_below_its_smallest_meaningful_size.
item 3   test_item3_set_target_channel_layout_must_match_the_input.
item 5   test_item5_every_buffer_follows_the_loss_dtype, test_item5_dists_float64_matches_the_official_code.
item 6   test_item6_options_that_cannot_apply_are_refused.
also     test_shared_module_in_train_mode_keeps_its_batchnorm_statistics.
item 11  test_item11_float_arguments_must_be_finite.
item 15  test_item15_range_checks_that_can_be_wrong_warn, test_item15_range_checks_that_cannot_be_wrong_raise.

Random-weight trunks and small images throughout (the rules do not depend on the weights).
"""
from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from torch import nn

import perceptloss
from perceptloss import DISTS, LPIPS, FeatureLoss, StyleLoss, VolumeLoss
from perceptloss import _validation, functional
from perceptloss.basicsr import from_basicsr
from perceptloss.preprocessing import Normalization

from .helpers import assert_close, TinyNet

SHALLOW = ["relu1_1", "relu2_1"]


# ----------------------------------------------------------------------------------------------- item 2


def _losses_16():
    """name -> (factory(**kw), channels, size): every loss and form, with the smallest images it takes."""
    f = lambda **kw: FeatureLoss("vgg19", SHALLOW, weights=None, **kw)  # noqa: E731
    return {
        "feature-l2": (lambda **kw: f(**kw), 3, 16),
        "feature-l1": (lambda **kw: f(distance="l1", **kw), 3, 16),
        "feature-cosine": (lambda **kw: f(distance="cosine", **kw), 3, 16),
        "feature-charbonnier": (lambda **kw: f(distance="charbonnier", **kw), 3, 16),
        "style-l2": (lambda **kw: StyleLoss("vgg19", SHALLOW, weights=None, **kw), 3, 16),
        "style-l1": (lambda **kw: StyleLoss("vgg19", SHALLOW, weights=None, distance="l1", **kw), 3, 16),
        "lpips-alex": (lambda **kw: LPIPS("alex", weights=None, **kw), 3, 32),
        "lpips-alex-spatial": (lambda **kw: LPIPS("alex", weights=None, spatial=True, **kw), 3, 32),
        "lpips-vgg": (lambda **kw: LPIPS("vgg", weights=None, **kw), 3, 16),
        "lpips-squeeze": (lambda **kw: LPIPS("squeeze", weights=None, **kw), 3, 24),
        "dists": (lambda **kw: DISTS(weights=None, **kw), 3, 17),
        "replicate": (lambda **kw: f(channels="replicate", **kw), 1, 16),
        "per_channel": (lambda **kw: f(channels="per_channel", **kw), 2, 16),
        "groups-none": (lambda **kw: f(channels="groups", channel_reduction="none", **kw), 6, 16),
        "volume": (lambda **kw: VolumeLoss(f(channels="replicate", reduction="none", **kw), axes=(2,)), 1, 16),
    }


LOSSES_16 = _losses_16()
MODES_16 = [("dtype", torch.float16), ("dtype", torch.bfloat16), ("autocast", torch.float16), ("autocast", torch.bfloat16)]


def _edge_pairs(c: int, size: int, volume: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of the hard cases: identical random, identical black, identical constant, black vs random."""
    g = torch.Generator().manual_seed(0)
    shape = (c, 2, size, size) if volume else (c, size, size)
    r = torch.rand(*shape, generator=g)
    black, grey = torch.zeros(shape), torch.full(shape, 0.5)
    return torch.stack([r, black, grey, black]), torch.stack([r, black, grey, r])


@pytest.mark.parametrize("mode, dtype", MODES_16, ids=[f"{m}-{str(d)[6:]}" for m, d in MODES_16])
@pytest.mark.parametrize("name", sorted(LOSSES_16))
def test_item2_finite_gradients_in_16_bits(name, mode, dtype):
    """DISTS in float16 gave all-NaN gradients (its L2 pooling's sqrt(x + 1e-12): 1e-12 is 0 in float16, so an
    all-zero window gave sqrt'(0) = inf, inf * 0 = NaN). The rule: every loss, every form, finite values and
    gradients under float16 and bfloat16, explicit dtype= or autocast, on inputs with zero windows."""
    make, c, size = LOSSES_16[name]
    torch.manual_seed(0)
    loss = make(dtype=dtype) if mode == "dtype" else make()
    x, y = _edge_pairs(c, size, volume=name == "volume")
    x.requires_grad_()
    with torch.autocast("cpu", dtype=dtype, enabled=mode == "autocast"), warnings.catch_warnings():
        warnings.simplefilter("ignore", perceptloss.SlowPrecisionWarning)
        value = loss(x, y)
    assert torch.isfinite(value).all(), value
    value.sum().backward()
    assert x.grad.dtype == x.dtype
    bad = (~torch.isfinite(x.grad)).flatten(1).sum(1)
    assert bad.sum() == 0, f"non-finite gradient entries per sample (identical, black, constant, black vs random): {bad.tolist()}"


def test_dists_of_identical_images_is_zero():
    """DISTS(x, x) was -1.19e-7 (1 minus a sum of similarity terms that rounds above 1): clamped at 0."""
    torch.manual_seed(0)
    d = DISTS(weights=None)
    x, _ = _edge_pairs(3, 24, volume=False)
    x.requires_grad_()
    value = d(x, x.detach())
    assert (value >= 0).all() and value.max().item() < 1e-6
    value.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (d(x, x.flip(0)) > 0).any()  # different images still give positive values


@pytest.mark.parametrize("size", [(1, 1), (16, 64), (64, 8)])
def test_dists_refuses_images_below_its_smallest_meaningful_size(size):
    """DISTS took 1x1 images silently: its texture term compares spatial variances, which are 0 (S2 = 1 whatever
    the images) on a 1x1 feature map. Its deepest layer (relu5_3) is 1/16 of the image: 17x17 is the least
    that gives every layer 2x2 positions."""
    d = DISTS(weights=None)
    x = torch.rand(2, 3, *size)
    with pytest.raises(ValueError, match="at least 17x17"):
        d(x, x.flip(0))
    d(torch.rand(2, 3, 17, 17), torch.rand(2, 3, 17, 17))


# ----------------------------------------------------------------------------------------------- item 3


@pytest.mark.parametrize(
    "channels, target_shape, input_shape",
    [
        ("per_channel", (1, 4, 16, 16), (4, 1, 16, 16)),  # sample i would meet target channel i
        ("per_channel", (2, 2, 16, 16), (4, 1, 16, 16)),
        ("groups", (1, 6, 16, 16), (2, 3, 16, 16)),  # sample i would meet target group i
        ("replicate", (1, 1, 16, 16), (2, 3, 16, 16)),
    ],
)
def test_item3_set_target_channel_layout_must_match_the_input(channels, target_shape, input_shape):
    """set_target with another channel count paired input sample i with target channel i, silently. The rule:
    the input's channel layout must be the target's, or an error naming both."""
    loss = FeatureLoss("vgg19", SHALLOW, weights=None, channels=channels)
    loss.set_target(torch.rand(target_shape))
    with pytest.raises(ValueError, match=r"set_target.*\b%d channel" % target_shape[1]):
        loss(torch.rand(input_shape))
    spatial = LPIPS("alex", weights=None, channels=channels, spatial=True)
    spatial.set_target(torch.rand(*target_shape[:2], 32, 32))
    with pytest.raises(ValueError, match="set_target"):
        spatial(torch.rand(*input_shape[:2], 32, 32))


@pytest.mark.parametrize("channels, c", [("per_channel", 4), ("groups", 6), ("replicate", 1)])
def test_item3_a_matching_target_still_works(channels, c):
    loss = FeatureLoss("vgg19", SHALLOW, weights=None, channels=channels)
    x, t = torch.rand(3, c, 16, 16), torch.rand(1, c, 16, 16)
    assert_close(loss.set_target(t)(x), loss(x, t.expand_as(x)))
    assert_close(loss.set_target(t.expand_as(x).clone())(x), loss(x, t.expand_as(x)))


# ----------------------------------------------------------------------------------------------- item 5


def _all_losses_for_dtype():
    return {
        "feature": lambda **kw: FeatureLoss("vgg19", SHALLOW, weights=None, **kw),
        "style": lambda **kw: StyleLoss("vgg19", SHALLOW, weights=None, **kw),
        "lpips": lambda **kw: LPIPS("alex", weights=None, **kw),
        "dists": lambda **kw: DISTS(weights=None, **kw),
        "module": lambda **kw: FeatureLoss(TinyNet(), ["act1", "act2"], **kw),
    }


@pytest.mark.parametrize("name", sorted(_all_losses_for_dtype()))
def test_item5_every_buffer_follows_the_loss_dtype(name):
    """DISTS(dtype=torch.float64) kept α/β (and every loss its preprocessing constants) in float32. The rule: a
    float64 loss holds every tensor in float64; a 16-bit loss holds its network in 16 bits and its constants
    (α/β, heads, preprocessing) in float32, the dtype its statistics accumulate in."""
    make = _all_losses_for_dtype()[name]
    size = 32
    loss64 = make(dtype=torch.float64)
    loss64.set_target(torch.rand(1, 3, size, size))  # float32 images: the target's buffers are float64 too
    wrong = {n: b.dtype for n, b in loss64.named_buffers() if b.is_floating_point() and b.dtype != torch.float64}
    assert not wrong, wrong
    loss16 = make(dtype=torch.bfloat16)
    for n, b in loss16.named_buffers():
        if b.is_floating_point():
            assert b.dtype == (torch.bfloat16 if n.startswith("net.") else torch.float32), (n, b.dtype)
    # .double() after construction gives the same loss as dtype=torch.float64
    x, y = torch.rand(2, 3, size, size, dtype=torch.float64), torch.rand(2, 3, size, size, dtype=torch.float64)
    torch.manual_seed(0)
    a = make(dtype=torch.float64)
    torch.manual_seed(0)
    b = make().double()
    assert_close(a(x, y), b(x, y), rtol=1e-13, atol=1e-15)


def test_item5_dists_float64_matches_the_official_code():
    """With α/β in float64, DISTS(dtype=torch.float64) equals DISTS_pt in float64 to rounding (it was 8.9e-7 off)."""
    from .test_dists import official_dists, trunk_state

    ref = official_dists()
    ref = ref.double()
    # the official code writes ImageNet's mean/std as float32 literals (1e-9 off in float64): exact values here
    ref.mean.copy_(torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, -1, 1, 1))
    ref.std.copy_(torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, -1, 1, 1))
    ours = DISTS(weights=None, dtype=torch.float64)
    ours.net.load_trunk_state_dict(trunk_state(ref))
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 3, 48, 48, generator=g, dtype=torch.float64), torch.rand(2, 3, 48, 48, generator=g, dtype=torch.float64)
    expected = ref(x, y, require_grad=True)
    got = ours(x, y)
    assert ((got - expected).abs() / expected.abs()).max().item() < 1e-12


# ----------------------------------------------------------------------------------------------- item 6


def _tiny():
    torch.manual_seed(0)
    return TinyNet()


REFUSED = {
    "share_module float64": (lambda: FeatureLoss(_tiny(), ["act1"], share_module=True, dtype=torch.float64), "share_module"),
    "share_module bf16": (lambda: FeatureLoss(_tiny(), ["act1"], share_module=True, dtype=torch.bfloat16), "share_module"),
    "share_module auto": (lambda: FeatureLoss(_tiny(), ["act1"], share_module=True, dtype="auto"), "share_module"),
    "share_module registered": (lambda: FeatureLoss("vgg19", SHALLOW, weights=None, share_module=True), "share_module"),
    "weights with a module": (lambda: FeatureLoss(_tiny(), ["act1"], weights="caffe"), "weights"),
    "eps without charbonnier": (lambda: FeatureLoss("vgg19", SHALLOW, weights=None, charbonnier_eps=0.1), "charbonnier_eps"),
    "fused charbonnier": (
        lambda: FeatureLoss("vgg19", SHALLOW, weights=None, distance="charbonnier", fused=True), "fused"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_item6_options_that_cannot_apply_are_refused(case):
    """share_module=True ignored dtype= (float64 silently ran float32; bf16 warned that bf16 is slow, then ran
    float32). The rule: an option that cannot apply is refused, with the reason and what to do."""
    make, word = REFUSED[case]
    if case == "fused charbonnier" and not perceptloss.HAS_EXT:
        pytest.skip("fused=True needs the compiled operator")
    with warnings.catch_warnings():
        warnings.simplefilter("error", perceptloss.SlowPrecisionWarning)  # no "bf16 is slow" before the refusal
        with pytest.raises(ValueError, match=word):
            make()


def test_item6_what_does_apply_is_kept():
    module = _tiny()
    FeatureLoss(module, ["act1"], share_module=True, dtype=torch.float32)  # the module's own dtype: applies
    double = FeatureLoss(module.double(), ["act1"], share_module=True, dtype=torch.float64)
    assert double.dtype == torch.float64
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert double(x, x.flip(0)).dtype == torch.float64
    assert FeatureLoss("vgg19", SHALLOW, weights=None, distance="charbonnier", charbonnier_eps=0.1).charbonnier_eps == 0.1
    assert FeatureLoss("vgg19", SHALLOW, weights=None, distance="charbonnier").charbonnier_eps == 1e-3


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


def test_shared_module_in_train_mode_keeps_its_batchnorm_statistics():
    """With share_module=True a module in train mode updated its BatchNorm running statistics twice per call
    (input and target), with generated images. The loss reads the module, it does not train it: the module
    normalises with batch statistics as its mode says, and its running statistics are left as they were."""
    torch.manual_seed(0)
    disc = BNNet().train()
    loss = FeatureLoss(disc, ["act"], share_module=True)
    before = {k: v.clone() for k, v in disc.bn.state_dict().items()}
    x, y = torch.rand(4, 3, 8, 8, requires_grad=True), torch.rand(4, 3, 8, 8)
    value = loss(x, y)
    value.backward()
    loss.set_target(y)
    loss(x.detach())
    for k, v in disc.bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the value is the train-mode one: batch statistics of each batch
    twin = BNNet()
    twin.load_state_dict(disc.state_dict())
    twin.train()
    expected = (twin(x) - twin(y)).square().mean()
    assert_close(value, expected)
    assert disc.conv.weight.grad is not None and disc.bn.weight.grad is not None  # it still learns through it
    # the owner's own forward still updates them
    disc(x.detach())
    assert not torch.equal(disc.bn.running_mean, before["running_mean"])
    # in eval mode the running statistics are used, as before
    disc.eval()
    assert_close(loss(x, y), (disc(x) - disc(y)).square().mean())


# ----------------------------------------------------------------------------------------------- item 11


def _feats():
    return [torch.rand(2, 3, 4, 4)], [torch.rand(2, 3, 4, 4)]


FLOAT_ARGUMENTS = {
    "charbonnier_eps": (
        lambda v: FeatureLoss("vgg19", SHALLOW, weights=None, distance="charbonnier", charbonnier_eps=v),
        [math.inf, math.nan, 0.0, -1e-3]),
    "eps": (lambda v: functional.charbonnier_distance(*_feats(), eps=v), [math.inf, math.nan, 0.0]),
    "weights": (lambda v: functional.feature_distance(*_feats(), [v]), [math.inf, math.nan, -1.0]),
    "unit_normalize eps": (lambda v: functional.unit_normalize(torch.rand(1, 3, 2, 2), eps=v), [math.inf, math.nan, -1.0]),
    "perceptual_weight": (
        lambda v: from_basicsr({"layer_weights": {"conv1_2": 1.0}, "perceptual_weight": v}, weights=None),
        [math.inf, math.nan]),
    "style_weight": (
        lambda v: from_basicsr({"layer_weights": {"conv1_2": 1.0}, "style_weight": v}, weights=None),
        [math.inf, math.nan, -1.0]),
    "std": (lambda v: Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, v, 1.0)), [math.inf, math.nan, 0.0, -1.0]),
    "mean": (lambda v: Normalization(mean=(0.0, v, 0.0), std=(1.0, 1.0, 1.0)), [math.inf, math.nan]),
    "scale": (lambda v: Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale=v), [math.inf, math.nan, 0.0]),
    "input_range": (lambda v: FeatureLoss("vgg19", SHALLOW, weights=None, input_range=(0.0, v)), [math.inf, math.nan]),
    "layer weights": (lambda v: FeatureLoss("vgg19", SHALLOW, weights=None, layer_weights=[1.0, v]), [math.inf, math.nan, -1.0]),
}


@pytest.mark.parametrize(
    "name, value",
    [(n, v) for n, (_, values) in sorted(FLOAT_ARGUMENTS.items()) for v in values],
)
def test_item11_float_arguments_must_be_finite(name, value):
    """charbonnier_eps=inf was accepted (every value inf). The rule: every float argument of the library is
    checked finite, and positive (or >= 0) where it must be, with an error naming it."""
    make, _ = FLOAT_ARGUMENTS[name]
    word = {"weights": "weight", "layer weights": "layer weights"}.get(name, name.split()[-1])
    with pytest.raises(ValueError, match=re.escape(word)):
        make(value)


# ----------------------------------------------------------------------------------------------- item 15


@pytest.fixture
def fresh_range_warnings(monkeypatch):
    monkeypatch.setattr(_validation, "_WARNED_RANGE", set())


REAL_IMAGES = {
    "near-black frame in 0-255": (lambda: torch.rand(2, 3, 16, 16) * 2, (0, 255)),
    "bright sky in [-1, 1]": (lambda: torch.rand(2, 3, 16, 16) * 0.9 + 0.1, (-1, 1)),
}


@pytest.mark.parametrize("case", sorted(REAL_IMAGES))
def test_item15_range_checks_that_can_be_wrong_warn(case, fresh_range_warnings):
    """A near-black frame in 0-255 (values <= 2, declared (0, 255)) and a bright sky in [-1, 1] (values 0.1-1)
    raised by default: the reverse checks guess from the values that the range was declared wrongly, and a
    real image can look like that. A check that can be wrong about a real image warns (once per declared
    range), it does not raise."""
    images, declared = REAL_IMAGES[case]
    x = images()
    loss = FeatureLoss("vgg19", SHALLOW, weights=None, input_range=declared)
    with pytest.warns(_validation.InputRangeWarning, match="check_range='off'"):
        value = loss(x, x.flip(0))
    assert torch.isfinite(value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(x, x.flip(0))  # shown once per declared range, not at every call
        FeatureLoss("vgg19", SHALLOW, weights=None, input_range=declared, check_range="off")(x, x.flip(0))


@pytest.mark.parametrize(
    "images, declared",
    [
        (lambda: torch.rand(2, 3, 16, 16) * 255, (0, 1)),  # 0-255 images declared as (0, 1)
        (lambda: torch.rand(2, 3, 16, 16) * 2 - 1, (0, 1)),  # [-1, 1] images declared as (0, 1)
        (lambda: torch.rand(2, 3, 16, 16) * 255 - 128, (-1, 1)),
    ],
)
def test_item15_range_checks_that_cannot_be_wrong_raise(images, declared, fresh_range_warnings):
    """Values beyond the declared range by more than half its width are in no image of that range: this check
    cannot be wrong about a real image, so it still raises by default (check_range='warn' makes it a warning)."""
    x = images()
    with pytest.raises(ValueError, match="was declared"):
        FeatureLoss("vgg19", SHALLOW, weights=None, input_range=declared)(x, x.flip(0))
    with pytest.warns(UserWarning, match="was declared"):
        FeatureLoss("vgg19", SHALLOW, weights=None, input_range=declared, check_range="warn")(x, x.flip(0))
