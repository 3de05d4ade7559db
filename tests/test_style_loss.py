"""StyleLoss (Gram matrices) and set_target for StyleLoss and FeatureLoss."""
import pytest
import torch

from perceptloss import FeatureLoss, StyleLoss, gram_matrix
from perceptloss.preprocessing import IDENTITY

from .helpers import assert_close


def tiny_style(net, **kw):
    return StyleLoss(net, ["act1", "act2"], layer_weights=[1.0, 0.5], normalization=IDENTITY, **kw)


def test_gram_matrix_against_a_hand_computation():
    f = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    g = gram_matrix(f)
    assert g.shape == (2, 3, 3)
    for n in range(2):
        for i in range(3):
            for j in range(3):
                expected = sum(f[n, i, h, w] * f[n, j, h, w] for h in range(4) for w in range(5)) / (3 * 4 * 5)
                assert_close(g[n, i, j], expected)
    assert_close(g, g.transpose(1, 2))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        gram_matrix(torch.randn(3, 4, 5))


def test_gram_matrix_accumulates_in_float32_under_autocast():
    f = torch.randn(2, 16, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = gram_matrix(f)
    assert g.dtype == torch.float32
    assert_close(g, gram_matrix(f))  # not lowered to bf16
    assert gram_matrix(f.bfloat16()).dtype == torch.float32
    assert gram_matrix(f.double()).dtype == torch.float64


@pytest.mark.parametrize("fused", [False, None])
def test_style_loss_value_by_hand(tiny_net, fused):
    tiny_net.double()  # the loss runs a private copy of the module (made below, in float64 too)
    loss = tiny_style(tiny_net, fused=fused, reduction="none")
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    y = torch.rand(3, 3, 8, 8, dtype=torch.float64)

    def grams(img):
        a1 = tiny_net.act1(tiny_net.conv1(img))
        a2 = tiny_net.act2(tiny_net.conv2(a1))
        out = []
        for f in (a1, a2):
            m = f.flatten(2)
            out.append(m @ m.transpose(1, 2) / m[0].numel())
        return out

    gx, gy = grams(x), grams(y)
    expected = torch.stack([((a - b) ** 2).sum(dim=(1, 2)) for a, b in zip(gx, gy)], dim=1) * torch.tensor(
        [1.0, 0.5], dtype=torch.float64
    )
    assert_close(loss.per_layer(x, y), expected)
    assert_close(loss(x, y), expected.sum(1))
    mean = tiny_style(tiny_net, fused=fused).double()
    assert_close(mean(x, y), expected.sum(1).mean())


def test_style_loss_gradcheck_float64(tiny_net):
    for fused in (False, None):
        loss = tiny_style(tiny_net, fused=fused, check_range="off").double()
        x = torch.rand(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
        y = torch.rand(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: loss(a, b), (x, y))


@pytest.mark.parametrize("cls", [StyleLoss, FeatureLoss])
def test_set_target_is_equivalent_to_passing_the_target(tiny_net, cls):
    loss = cls(tiny_net, ["act1", "act2"], normalization=IDENTITY, reduction="none")
    x = torch.rand(3, 3, 8, 8, requires_grad=True)
    y = torch.rand(3, 3, 8, 8)
    direct = loss(x, y)
    (g_direct,) = torch.autograd.grad(direct.sum(), x)
    assert loss.set_target(y) is loss
    cached = loss(x)
    (g_cached,) = torch.autograd.grad(cached.sum(), x)
    assert_close(cached, direct)
    assert_close(g_cached, g_direct)
    assert_close(loss.per_layer(x), loss.per_layer(x, y))
    # a target batch of 1 is compared with every input
    loss.set_target(y[:1])
    assert_close(loss(x), loss(x, y[:1].expand(3, -1, -1, -1)))
    # cleared: a clear error
    loss.set_target(None)
    with pytest.raises(ValueError, match="set_target"):
        loss(x)


def test_set_target_does_not_rerun_the_network(tiny_net):
    loss = tiny_style(tiny_net)
    loss.set_target(torch.rand(1, 3, 8, 8))
    calls = []
    handle = loss.net.register_forward_hook(lambda *a: calls.append(1))
    try:
        loss(torch.rand(2, 3, 8, 8))
    finally:
        handle.remove()
    assert len(calls) == 1  # the input only


def test_style_target_of_another_size_and_shape_errors(tiny_net):
    style = tiny_style(tiny_net)
    style.set_target(torch.rand(1, 3, 16, 12))  # Gram matrices do not depend on H, W
    assert torch.isfinite(style(torch.rand(2, 3, 8, 8)))
    content = FeatureLoss(tiny_net, ["act1", "act2"], normalization=IDENTITY)
    content.set_target(torch.rand(1, 3, 16, 12))
    with pytest.raises(ValueError, match="target's size"):
        content(torch.rand(2, 3, 8, 8))
    content.set_target(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="batch of 1 or N"):
        content(torch.rand(3, 3, 8, 8))
    with pytest.raises(ValueError, match="input_range"):
        content.set_target(torch.rand(1, 3, 8, 8) * 255)
    with pytest.raises(ValueError, match="unsqueeze"):
        content.set_target(torch.rand(3, 8, 8))


def test_frozen_by_construction_and_eval(tiny_net):
    loss = StyleLoss("vgg19", "style", weights=None)
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert all(not m.training for m in loss.net.modules())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss.set_target(torch.rand(1, 3, 32, 32))
    loss(x).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())
    assert loss.layers == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def test_style_loss_fused_equals_eager_on_vgg():
    torch.manual_seed(0)
    fused = StyleLoss("vgg19", weights=None, fused=True)
    eager = StyleLoss("vgg19", weights=None, fused=False)
    eager.net.load_state_dict(fused.net.state_dict())  # the loss's own state_dict leaves the network out
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert_close(fused.per_layer(x, y), eager.per_layer(x, y), rtol=1e-5, atol=1e-8)


def test_style_loss_under_autocast_is_float32(tiny_net):
    loss = tiny_style(tiny_net)
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss.per_layer(x, y)
        loss.set_target(y)
        cached = loss.per_layer(x)
    assert out.dtype == torch.float32 and cached.dtype == torch.float32
    assert_close(out, loss.per_layer(x, y), rtol=5e-2, atol=1e-3)
    assert_close(cached, out)


@pytest.mark.slow
def test_compile_fullgraph_with_a_fixed_style_target(tiny_net):
    loss = tiny_style(tiny_net)
    loss.set_target(torch.rand(1, 3, 8, 8))
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    eager = loss(x)
    compiled = torch.compile(loss, fullgraph=True)(x)
    assert_close(compiled, eager, rtol=1e-5, atol=1e-7)
    compiled.backward()
    assert x.grad is not None
