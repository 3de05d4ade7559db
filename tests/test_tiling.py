"""perceptloss.tiled: tiled evaluation equals the whole-image loss (values, maps, gradients), in bounded memory.

Random-weight trunks (``weights=None``) truncated at shallow taps keep it fast; float64 results must agree to
1e-12 relative (norm-wise), float32 to 1e-5 relative (norm-wise).
"""
from __future__ import annotations

import pytest
import torch

from perceptloss import DISTS, LPIPS, FeatureLoss, StyleLoss, tiled
from perceptloss.preprocessing import IDENTITY
from perceptloss.backbones.vgg_l2pool import VGGL2PoolFeatures
from perceptloss.tiling import TiledLoss

from .helpers import TinyNet

F64_TOL = 1e-12
F32_TOL = 1e-5
SIZES = [(40, 57), (20, 30)]  # not divisible by the tile; the last one smaller than a tile


def rel_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (float64)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def images(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=dtype), torch.rand(*shape, generator=g, dtype=dtype)


def truncated_dists(dtype=torch.float64) -> DISTS:
    """DISTS with its trunk cut after relu2_2 (the same statistics, fewer layers: fast)."""
    loss = DISTS(weights=None)
    loss.net = VGGL2PoolFeatures(("relu1_2", "relu2_2"))
    loss.layers = ("image", "relu1_2", "relu2_2")
    return loss.to(dtype)


@pytest.fixture(scope="module")
def losses():
    return {
        "l2": FeatureLoss("vgg19", ["relu1_2", "relu2_1"], weights=None, reduction="none").double(),
        "l1": FeatureLoss("vgg19", ["relu2_1"], weights=None, distance="l1").double(),
        "cosine": FeatureLoss("vgg19", ["relu1_1", "relu2_2"], weights=None, distance="cosine").double(),
        "charbonnier": FeatureLoss("vgg19", ["relu2_1"], weights=None, distance="charbonnier",
                                   reduction="sum").double(),
        "style": StyleLoss("vgg19", ["relu1_1", "relu2_1"], weights=None).double(),
        "dists": truncated_dists(),
    }


class NetInputs:
    """Records the spatial size of every batch the loss's network sees."""

    def __init__(self, loss):
        self.sizes: list[tuple[int, int]] = []
        self.handle = loss.net.register_forward_pre_hook(lambda m, args: self.sizes.append(tuple(args[0].shape[-2:])))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("kind", ["l2", "l1", "cosine", "charbonnier", "style", "dists"])
@pytest.mark.parametrize("size", SIZES)
def test_tiled_equals_whole_float64(losses, kind, size):
    loss = losses[kind]
    x, y = images((2 if kind == "l2" else 1, 3, *size))
    whole = loss(x, y)
    with NetInputs(loss) as seen:
        got = tiled(loss, tile=32)(x, y)
    assert got.shape == whole.shape and got.dtype == whole.dtype
    assert rel_norm(got, whole) <= F64_TOL
    assert max(max(s) for s in seen.sizes) <= 32  # the network never saw more than a tile
    if max(size) > 32:
        assert len(seen.sizes) > 2  # it was tiled
    assert rel_norm(tiled(loss, tile=32).per_layer(x, y), loss.per_layer(x, y)) <= F64_TOL


@pytest.mark.parametrize("spatial", [False, True])
def test_lpips_alex_float64_and_maps(spatial):
    loss = LPIPS("alex", weights=None, heads=None, spatial=spatial).double()
    x, y = images((1, 3, 190, 185))
    with NetInputs(loss) as seen:
        got = tiled(loss, tile=180)(x, y)
    whole = loss(x, y)
    assert got.shape == whole.shape  # (1,) or the (1, 1, 200, 185) map
    assert rel_norm(got, whole) <= F64_TOL
    assert max(max(s) for s in seen.sizes) <= 180 and len(seen.sizes) > 2


def test_float32_normwise():
    x, y = images((1, 3, 70, 53), torch.float32, seed=1)
    for loss in (FeatureLoss("vgg19", ["relu1_2", "relu2_1", "relu3_1"], weights=None, reduction="none"),
                 StyleLoss("vgg19", ["relu1_1", "relu2_1"], weights=None), truncated_dists(torch.float32)):
        assert rel_norm(tiled(loss, tile=48)(x, y), loss(x, y)) <= F32_TOL, type(loss).__name__


@pytest.mark.parametrize("kind", ["l2", "style", "dists"])
def test_gradients_equal_whole(losses, kind):
    loss = losses[kind]
    x, y = images((1, 3, 45, 38), seed=2)
    xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
    loss(xa, ya).sum().backward()
    xb, yb = x.clone().requires_grad_(), y.clone().requires_grad_()
    with NetInputs(loss) as seen:
        tiled(loss, tile=32)(xb, yb).sum().backward()
    assert rel_norm(xb.grad, xa.grad) <= F64_TOL and rel_norm(yb.grad, ya.grad) <= F64_TOL
    assert max(max(s) for s in seen.sizes) <= 32  # the backward pass recomputed tiles, not the image


@pytest.mark.parametrize("kind", ["l2", "cosine", "style", "dists"])
def test_set_target(losses, kind):
    loss = losses[kind]
    x, y = images((2, 3, 36, 45), seed=3)
    target = y[:1] if kind != "style" else images((1, 3, 37, 41), seed=4)[0]  # style: any target size
    loss.set_target(target)
    try:
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        whole = loss(xa)
        got = tiled(loss, tile=32)(xb)
        assert rel_norm(got, whole) <= F64_TOL
        whole.sum().backward()
        got.sum().backward()
        assert rel_norm(xb.grad, xa.grad) <= F64_TOL
    finally:
        loss.set_target(None)


def test_channel_policy_grey_images():
    loss = FeatureLoss("vgg19", ["relu2_1"], weights=None, channels="per_channel", reduction="none").double()
    x, y = images((1, 2, 40, 37), seed=5)
    assert rel_norm(tiled(loss, tile=32)(x, y), loss(x, y)) <= F64_TOL


def test_user_module_needs_halo_then_is_exact():
    loss = FeatureLoss(TinyNet(), ["act1", "act2"], normalization=IDENTITY).double()
    with pytest.raises(ValueError, match=r"halo=H"):
        tiled(loss, tile=128)
    x, y = images((1, 3, 300, 140), seed=6)
    assert rel_norm(tiled(loss, tile=128, halo=4)(x, y), loss(x, y)) <= F64_TOL


def test_clear_errors(losses):
    loss = losses["l2"]
    with pytest.raises(ValueError, match=r"use tile >= \d+"):
        tiled(FeatureLoss("vgg19", ["relu3_1"], weights=None), tile=16)(*images((1, 3, 64, 64), torch.float32))
    with pytest.raises(ValueError, match="halo=None"):
        tiled(loss, tile=32, halo=1)(*images((1, 3, 64, 64)))
    with pytest.raises(ValueError, match="tile must be"):
        tiled(loss, tile=0)
    with pytest.raises(ValueError, match="share_module=False"):
        tiled(FeatureLoss(TinyNet(), ["act1"], share_module=True), tile=64)
    with pytest.raises(ValueError, match="set_target"):
        tiled(loss, tile=32)(images((1, 3, 64, 64))[0])


def test_call_of_the_cli():
    import perceptloss.tiling

    loss = FeatureLoss("vgg19", ["relu1_1"], weights=None)
    assert isinstance(perceptloss.tiling.tiled(loss, tile=64), TiledLoss)


def test_tiled_dists_is_clamped_as_the_whole_loss():
    """tiled(DISTS()) finishes its terms as DISTS does: 1 - sum, clamped at 0 (it used to skip the clamp)."""
    loss = truncated_dists(torch.float64)
    published = loss.criterion.layer_weights
    # the truncated trunk's α, β sum to about 0.24: times 5, the terms of identical images sum to about 1.2 > 1
    loss.criterion.layer_weights = lambda: tuple([5 * w for w in ws] for ws in published())
    x, _ = images((2, 3, 40, 57))
    whole, tiles = loss(x, x), tiled(loss, tile=32)(x, x)
    assert torch.equal(whole, torch.zeros_like(whole))
    assert torch.equal(tiles, whole)
    assert (tiled(loss, tile=32).per_layer(x, x).sum(dim=-1) > 1).all()  # the terms themselves are not clamped


def test_tiling_is_the_criterions_to_say(losses):
    """A criterion that does not say how it tiles is refused with an error that says what to set."""
    from perceptloss.criteria import Criterion

    class Opaque(Criterion):
        def compare(self, a, b):
            return torch.stack([(x - y).square().flatten(1).mean(1) for x, y in zip(a, b)], 1)

    loss = FeatureLoss("vgg19", ["relu1_1"], weights=None, distance=Opaque())
    with pytest.raises(ValueError, match="tiling to 'local'"):
        tiled(loss, tile=32)
    Opaque.tiling = "local"
    x, y = images((1, 3, 40, 57))
    assert rel_norm(tiled(loss.double(), tile=32)(x, y), loss(x, y)) <= F64_TOL
