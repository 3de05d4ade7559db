"""Convolution + ReLU as one oneDNN primitive in the frozen trunks (perceptloss._conv_relu): the same values and
gradients as the two operators, used only where it is the same computation."""
import pytest
import torch

import perceptloss._conv_relu as conv_relu_module
import perceptloss.backbones.sequential as sequential
from perceptloss import LPIPS, FeatureLoss

from .helpers import relative

pytestmark = pytest.mark.skipif(not conv_relu_module._AVAILABLE, reason="this torch has no oneDNN")

#: float32: oneDNN may pick another kernel for the fused primitive (a different summation order), so values are
#: compared norm-wise; bfloat16: within its rounding of the activations.
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.fixture
def fused_calls(monkeypatch):
    calls = []

    def counting(conv, x, **how):
        calls.append(x.dtype)
        return conv_relu_module.conv_relu(conv, x, **how)

    monkeypatch.setattr(sequential, "conv_relu", counting)
    return calls


def unfused(monkeypatch):
    monkeypatch.setattr(conv_relu_module, "_AVAILABLE", False)


def norm_relative(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def value_and_gradient(loss, x, y):
    x = x.clone().requires_grad_()
    value = loss(x, y)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return value.detach(), grad


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    not conv_relu_module._BF16, reason="oneDNN runs no bfloat16 convolution on this CPU (level)"))])
@pytest.mark.parametrize("make", [lambda d: FeatureLoss("vgg19", "dfc123", weights=None, dtype=d),
                                  lambda d: LPIPS("alex", weights=None, dtype=d)], ids=["vgg19", "lpips-alex"])
def test_same_values_and_input_gradients_as_two_operators(monkeypatch, fused_calls, dtype, make):
    torch.manual_seed(0)
    loss = make(dtype)
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    fused = value_and_gradient(loss, x, y)
    with torch.no_grad():
        fused_eval = loss(x, y)
    assert fused_calls and set(fused_calls) == {dtype}
    unfused(monkeypatch)
    fused_calls.clear()
    plain = value_and_gradient(loss, x, y)
    assert not fused_calls
    assert norm_relative(fused[0], plain[0]) <= TOL[dtype]
    assert norm_relative(fused[1], plain[1]) <= TOL[dtype]
    assert norm_relative(fused_eval, plain[0]) <= TOL[dtype]


@pytest.mark.parametrize("layers", [["relu1_2", "relu2_2"], ["relu1_1", "relu2_1"]], ids=["tapped", "pooled"])
def test_second_order_gradient_as_two_operators(monkeypatch, layers):
    """float32: the backward is made of differentiable operators (create_graph=True takes ATen's ReLU and
    max-pool backward, not the operator's kernels), so a gradient penalty works through it: through tapped
    ReLUs, and through a convolution + ReLU + max-pool block (relu1_1, relu2_1)."""
    torch.manual_seed(0)
    loss = FeatureLoss("vgg16", layers, weights=None)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)

    def penalty():
        xr = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(loss(xr, y), xr, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), xr)
        return gg

    fused = penalty()
    unfused(monkeypatch)
    assert norm_relative(fused, penalty()) <= 1e-5


def test_two_operators_where_fusing_would_change_something(fused_calls):
    torch.manual_seed(0)
    x, y = torch.rand(1, 3, 32, 32, dtype=torch.float64), torch.rand(1, 3, 32, 32, dtype=torch.float64)
    FeatureLoss("vgg16", ["relu1_2"], weights=None, dtype=torch.float64)(x, y)  # oneDNN has no float64
    assert not fused_calls
    # a requested pre-activation (conv1_2) is the convolution's own output: conv1_2 runs alone, conv1_1 fused
    FeatureLoss("vgg16", ["conv1_2", "relu2_1"], weights=None)(x.float(), y.float())
    assert len(fused_calls) == 2  # conv1_1 and conv2_1 (input and target in one batch: no gradient asked)


def test_compiled_only_with_a_gradient_and_not_under_autocast(monkeypatch):
    """Under torch.compile the blocks go into training graphs; a graph without gradient is inductor's to fuse."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    assert conv_relu_module.can_fuse(conv, torch.rand(1, 3, 8, 8))
    with torch.no_grad():
        assert not conv_relu_module.can_fuse(conv, torch.rand(1, 3, 8, 8))
    monkeypatch.undo()
    assert conv_relu_module.can_fuse(conv, torch.rand(1, 3, 8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast would run conv2d in bf16, this op in fp32
        assert not conv_relu_module.can_fuse(conv, torch.rand(1, 3, 8, 8))
    assert not conv_relu_module.can_fuse(torch.nn.Conv2d(3, 4, 3, padding="same"), torch.rand(1, 3, 8, 8))
    assert not conv_relu_module.can_fuse(torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
                                         torch.rand(1, 3, 8, 8))
