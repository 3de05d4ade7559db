"""``checkpoint=True``: the trunk's activations are recomputed in the backward pass (one checkpointed segment per
tapped layer): the same gradient (float64, to rounding), and far fewer tensors kept for the backward pass."""
from __future__ import annotations

import pytest
import torch

from perceptloss import DISTS, LPIPS, FeatureLoss, StyleLoss
from perceptloss.preprocessing import IDENTITY

from .helpers import TinyNet

LOSSES = {
    "feature": lambda **kw: FeatureLoss("vgg19", "dfc345", weights=None, **kw),
    "feature-l1": lambda **kw: FeatureLoss("vgg19", ["conv1_2", "relu2_2", "pool3"], weights=None, distance="l1", **kw),
    "style": lambda **kw: StyleLoss("vgg19", weights=None, **kw),
    "lpips": lambda **kw: LPIPS("squeeze", weights=None, heads=None, **kw),
    "dists": lambda **kw: DISTS(weights=None, **kw),
    "module": lambda **kw: FeatureLoss(_seeded_tiny(), ["act1", "act2"], normalization=IDENTITY, **kw),
}


def _seeded_tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyNet()


def _grad(loss: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    value = loss(x, y).sum()
    value.backward()
    return value.detach(), x.grad


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_checkpointed_gradient_equals_the_plain_one(name):
    torch.manual_seed(1)
    plain = LOSSES[name](dtype=torch.float64)
    torch.manual_seed(1)
    recomputed = LOSSES[name](dtype=torch.float64, checkpoint=True)
    recomputed.net.load_state_dict(plain.net.state_dict())  # the same random trunk
    x, y = torch.rand(2, 3, 40, 36, dtype=torch.float64), torch.rand(2, 3, 40, 36, dtype=torch.float64)
    v0, g0 = _grad(plain, x, y)
    v1, g1 = _grad(recomputed, x, y)
    assert torch.linalg.vector_norm(g0) > 0
    assert abs(v1 - v0) <= 1e-12 * abs(v0)
    assert torch.linalg.vector_norm(g1 - g0) <= 1e-12 * torch.linalg.vector_norm(g0)


def test_set_target_and_no_grad_calls_do_not_checkpoint():
    loss = FeatureLoss("vgg19", "dfc123", weights=None, checkpoint=True)
    loss.set_target(torch.rand(1, 3, 32, 32))
    with torch.no_grad():
        assert loss(torch.rand(2, 3, 32, 32)).shape == ()
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss(x).backward()
    assert x.grad is not None


def saved_bytes(loss: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of loss(x, y)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = loss(x, y)
    value.backward()
    return sum(storages.values())


def test_checkpointing_keeps_a_fraction_of_the_memory():
    torch.manual_seed(0)
    x, y = torch.rand(1, 3, 128, 128, requires_grad=True), torch.rand(1, 3, 128, 128)
    plain = saved_bytes(FeatureLoss("vgg19", "dfc345", weights=None), x, y)
    recomputed = saved_bytes(FeatureLoss("vgg19", "dfc345", weights=None, checkpoint=True), x, y)
    # every activation of the 12 layers up to relu5_1 against the image, the three taps and the segments' inputs
    assert recomputed < 0.2 * plain, (recomputed, plain)
