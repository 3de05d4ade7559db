"""FeatureLoss distances of image-restoration code: "cosine" (channel-unit-normalised squared distance, LPIPS
without heads for any backbone) and "charbonnier" (sqrt(d^2 + eps^2)), by hand and against LPIPS."""
import pytest
import torch
from torch import nn

from perceptloss import LPIPS, FeatureLoss
from perceptloss.functional import charbonnier_distance, unit_normalize
from perceptloss.lpips_heads import LPIPS_NORMALIZATION
from .helpers import assert_close


def images(n=2, size=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g).to(dtype), torch.rand(n, 3, size, size, generator=g).to(dtype)


@pytest.fixture(scope="module")
def vgg16():
    torch.manual_seed(0)
    return FeatureLoss("vgg16", ["relu1_2", "relu2_2", "conv3_1"], weights=None, reduction="none")


def by_hand(loss, x, y, term):
    fx, fy = loss.features(x), loss.features(y)
    return sum(w * term(a.double(), b.double()) for w, a, b in zip(loss.layer_weights, fx, fy)).float()


@pytest.mark.parametrize("fused", [None, False])
def test_cosine_by_hand(vgg16, fused):
    loss = FeatureLoss("vgg16", ["relu1_2", "relu2_2", "conv3_1"], weights=None, reduction="none",
                       distance="cosine", layer_weights=[1.0, 0.5, 2.0], fused=fused)
    loss.net.load_trunk_state_dict(vgg16.net.weight_tensors())
    x, y = images()

    def term(a, b):
        na = a / (a.square().sum(1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.square().sum(1, keepdim=True).sqrt() + 1e-10)
        return (na - nb).square().sum(1).mean(dim=(1, 2))  # mean over positions of ||a^ - b^||^2 = 2 (1 - cos)

    assert_close(loss(x, y), by_hand(loss, x, y, term), rtol=1e-5, atol=1e-6)


def test_cosine_is_lpips_without_heads():
    torch.manual_seed(0)
    metric = LPIPS("vgg", weights=None, heads=None)
    loss = FeatureLoss("vgg16", "lpips", weights=None, normalization=LPIPS_NORMALIZATION, distance="cosine",
                       reduction="none")
    loss.net.load_trunk_state_dict(metric.net.weight_tensors())
    x, y = images(size=64)
    assert_close(loss(x, y), metric(x, y), rtol=1e-5, atol=1e-7)


def test_cosine_gradient_finite_at_zero_features():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
    with torch.no_grad():
        net[0].weight.fill_(-1.0)
        net[0].bias.zero_()
    loss = FeatureLoss(net, ["1"], distance="cosine")
    x, y = images()
    x.requires_grad_()
    value = loss(x, y)  # every feature vector is 0 (dead ReLU)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all()
    z = torch.zeros(1, 3, 2, 2, requires_grad=True)
    (unit_normalize(z) - 0.5).square().sum().backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("eps", [1e-3, 0.5])
def test_charbonnier_by_hand(vgg16, eps):
    loss = FeatureLoss("vgg16", ["relu1_2", "relu2_2", "conv3_1"], weights=None, reduction="none",
                       distance="charbonnier", charbonnier_eps=eps, layer_weights=[1.0, 0.5, 2.0])
    loss.net.load_trunk_state_dict(vgg16.net.weight_tensors())
    x, y = images()
    expected = by_hand(loss, x, y, lambda a, b: ((a - b).square() + eps**2).sqrt().flatten(1).mean(1))
    assert_close(loss(x, y), expected, rtol=1e-5, atol=1e-7)


def test_charbonnier_function_gradient_and_dtypes():
    a = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda u: charbonnier_distance([u], [b], [1.5], eps=0.1), (a,))
    same = charbonnier_distance([a], [a.detach()], [1.0], eps=1e-3)
    assert_close(same, torch.full((2, 1), 1e-3, dtype=torch.float64))
    same.sum().backward()
    assert torch.isfinite(a.grad).all()
    half = charbonnier_distance([a.detach().bfloat16()], [b.bfloat16()], [1.0])
    assert half.dtype == torch.float32
    with pytest.raises(ValueError, match="eps"):
        charbonnier_distance([a], [b], [1.0], eps=0.0)


def test_distance_choices_and_set_target(vgg16):
    with pytest.raises(ValueError, match="distance"):
        FeatureLoss("vgg16", ["relu1_2"], weights=None, distance="huber")
    with pytest.raises(ValueError, match="charbonnier_eps"):
        FeatureLoss("vgg16", ["relu1_2"], weights=None, distance="charbonnier", charbonnier_eps=-1.0)
    for distance in ("cosine", "charbonnier"):
        loss = FeatureLoss("vgg16", ["relu1_2", "relu2_2"], weights=None, distance=distance, reduction="none")
        x, y = images()
        assert_close(loss.set_target(y)(x), loss(x, y))


def test_torch_compile_fullgraph():
    loss = FeatureLoss("vgg16", ["relu1_2"], weights=None, distance="cosine")
    x, y = images(size=16)
    assert_close(torch.compile(loss, fullgraph=True, backend="aot_eager")(x, y), loss(x, y), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("distance", ["l2", "l1", "cosine", "charbonnier"])
def test_feature_distance_maps_average_to_the_terms(distance):
    """FeatureDistance.maps: per layer (N, 1, h, w) maps whose spatial means are compare's columns, so every
    FeatureLoss has a spatial_map (float64: exact to rounding)."""
    torch.manual_seed(0)
    loss = FeatureLoss("vgg16", ["relu1_2", "relu2_2", "conv3_1"], weights=None, reduction="none",
                       distance=distance, fused=False).double()
    x, y = images(dtype=torch.float64)
    ra, rb = loss.representation(loss.features(x)), loss.representation(loss.features(y))
    maps = loss.criterion.maps(ra, rb)
    assert [tuple(m.shape) for m in maps] == [(2, 1) + tuple(a.shape[-2:]) for a in ra]
    assert_close(torch.stack([m.mean(dim=(1, 2, 3)) for m in maps], dim=1), loss.criterion.compare(ra, rb),
                 rtol=1e-12, atol=1e-14)
    assert loss.spatial_map(x, y).shape == (2, 1, 32, 32)
