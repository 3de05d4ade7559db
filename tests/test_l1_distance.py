"""The L1 form of the distance (p=1 / distance="l1"): fused operator vs reference, subgradient, compile, loss."""
import pytest
import torch

import perceptloss
from perceptloss import IDENTITY, FeatureLoss
from perceptloss.functional import feature_distance, feature_distance_reference

pytestmark = pytest.mark.skipif(not perceptloss.HAS_EXT, reason="fused operator not built")
op = torch.ops.perceptloss.feature_distance if perceptloss.HAS_EXT else None
op_backward = torch.ops.perceptloss.feature_distance_backward if perceptloss.HAS_EXT else None

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=1e-3),
       torch.bfloat16: dict(rtol=1e-2, atol=1e-2), torch.float64: dict(rtol=1e-12, atol=1e-12)}
SHAPES = [
    (2, [(4, 5, 5), (8, 3, 3)]),
    (1, [(3, 1, 1)]),
    (3, [(7, 13, 11), (1, 1, 1), (64, 9, 9)]),
    (2, [(16, 32, 33)]),
    (2, [(2, 3, 3)] * 30),
]


def make(n, shapes, dtype, device, seed=0, requires_grad=False, ties=False):
    """Random feature lists; with ``ties`` every other element of b equals a's (exactly, in ``dtype``)."""
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(n, *s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for s in shapes]
    b = [torch.randn(n, *s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for s in shapes]
    if ties:
        for x, y in zip(a, b):
            y.view(-1)[::2] = x.view(-1)[::2]
    w = [0.5 + i for i in range(len(shapes))]
    return [t.requires_grad_(requires_grad) for t in a], [t.requires_grad_(requires_grad) for t in b], w


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n, shapes", SHAPES)
def test_l1_forward_and_backward_match_reference(device, dtype, n, shapes):
    a, b, w = make(n, shapes, dtype, device, requires_grad=True, ties=True)
    out = op(a, b, w, 1)
    ref = feature_distance_reference([t.double() for t in a], [t.double() for t in b], w, p=1)
    manual = torch.stack(
        [wl * (x.double() - y.double()).abs().flatten(1).mean(1) for x, y, wl in zip(a, b, w)], dim=1
    )
    torch.testing.assert_close(ref, manual)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])
    g = torch.rand(n, len(shapes), dtype=out.dtype, device=device)
    grads = torch.autograd.grad(out, a + b, g)
    for x, y, wl, ga, gb, col in zip(a, b, w, grads[: len(a)], grads[len(a):], g.T):
        scale = (wl / x[0].numel() * col.double()).view(-1, *[1] * (x.dim() - 1))
        expected = torch.sign(x.detach().double() - y.detach().double()) * scale
        assert ga.dtype == dtype
        torch.testing.assert_close(ga.double(), expected, **TOL[dtype])
        torch.testing.assert_close(gb.double(), -expected, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("fused", [True, False])
def test_subgradient_is_zero_where_equal(device, dtype, fused):
    a, b, w = make(2, [(5, 6, 7), (64, 9, 9)], dtype, device, ties=True)
    a = [t.requires_grad_() for t in a]
    b = [t.requires_grad_() for t in b]
    feature_distance(a, b, w, fused=fused, p=1).sum().backward()
    for x, y in zip(a, b):
        equal = x.detach() == y.detach()
        assert equal.any() and (~equal).any()
        assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
        assert (x.grad[equal] == 0).all() and (y.grad[equal] == 0).all()
        assert (x.grad[~equal] != 0).all()
    # identical inputs: value 0, gradient exactly 0
    same = [t.detach().clone().requires_grad_() for t in a]
    out = feature_distance(same, [t.detach() for t in a], w, fused=fused, p=1)
    out.sum().backward()
    assert (out == 0).all() and all((t.grad == 0).all() for t in same)


@pytest.mark.parametrize("device", DEVICES)
def test_l1_gradcheck_float64(device):
    a, b, w = make(2, [(3, 4, 4), (5, 2, 3)], torch.float64, device, requires_grad=True)  # no ties: differentiable
    assert torch.autograd.gradcheck(lambda *t: op(list(t[:2]), list(t[2:]), w, 1), (*a, *b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [1, 2])
def test_opcheck_with_p(device, p):
    a, b, w = make(2, [(3, 4, 4), (5, 3, 3)], torch.float32, device, requires_grad=True)
    torch.library.opcheck(op, (a, b, w, p))
    g = torch.rand(2, 2, device=device)
    torch.library.opcheck(op_backward, (g, [t.detach() for t in a], [t.detach() for t in b], w, True, True, p))


def test_default_p_is_the_l2_form():
    a, b, w = make(2, [(3, 4, 4), (5, 3, 3)], torch.float32, "cpu")
    assert torch.equal(op(a, b, w), op(a, b, w, 2))
    assert not torch.equal(op(a, b, w, 1), op(a, b, w, 2))
    assert "int p=2" in str(op.default._schema)


@pytest.mark.parametrize("device", DEVICES)
def test_l1_channels_last_and_strided(device):
    a, b, w = make(2, [(8, 6, 5), (4, 7, 7)], torch.float32, device)
    ref = op(a, b, w, 1)
    cl = [t.to(memory_format=torch.channels_last) for t in a]
    torch.testing.assert_close(op(cl, b, w, 1), ref)
    wide = [torch.stack([t, t], dim=-1)[..., 0] for t in b]
    torch.testing.assert_close(op(a, wide, w, 1), ref)


def test_l1_deterministic_and_thread_independent():
    a, b, w = make(3, [(64, 40, 40), (8, 5, 5)], torch.float32, "cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = op(a, b, w, 1)
        torch.set_num_threads(max(2, threads))
        for _ in range(2):
            assert torch.equal(op(a, b, w, 1), one)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("device", DEVICES)
def test_l1_compile_fullgraph(device):
    a, b, w = make(2, [(3, 4, 4), (5, 3, 3)], torch.float32, device, requires_grad=True)

    def f(xs, ys):
        return (feature_distance(xs, ys, w, fused=True, p=1) * 2).sum()

    expected = f(a, b)
    eager_grads = torch.autograd.grad(expected, a + b)
    got = torch.compile(f, fullgraph=True)(a, b)
    torch.testing.assert_close(got, expected)
    for x, y in zip(torch.autograd.grad(got, a + b), eager_grads):
        torch.testing.assert_close(x, y)


def test_bad_p_is_a_clear_error():
    a, b, w = make(2, [(3, 4, 4)], torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="p must be 1"):
        op(a, b, w, 3)
    with pytest.raises(ValueError, match="p must be 1"):
        feature_distance(a, b, w, p=3)
    with pytest.raises(ValueError, match="distance must be 'l2'"):
        FeatureLoss("vgg19", "dfc123", weights=None, distance="L1")


def test_feature_loss_l1_value_and_gradients(tiny_net):
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    losses = {
        fused: FeatureLoss(tiny_net, ["act1", "act2"], layer_weights=[1.0, 0.5], normalization=IDENTITY,
                           distance="l1", fused=fused, reduction="none").double()
        for fused in (False, None)
    }
    tiny_net.double()
    a1 = tiny_net.act1(tiny_net.conv1(x))
    b1 = tiny_net.act1(tiny_net.conv1(y))
    f2, g2 = tiny_net.act2(tiny_net.conv2(a1)), tiny_net.act2(tiny_net.conv2(b1))
    manual = (a1 - b1).abs().flatten(1).mean(1) + 0.5 * (f2 - g2).abs().flatten(1).mean(1)
    for loss in losses.values():
        torch.testing.assert_close(loss(x, y), manual)
    assert torch.autograd.gradcheck(lambda a: losses[None](a, y + 0.25), (x,))  # ReLU zeros tie: shift y
    assert "distance='l1'" in repr(losses[None])


def test_feature_loss_l1_vgg_fused_equals_eager():
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    torch.manual_seed(0)
    fused = FeatureLoss("vgg19", "style", weights=None, distance="l1", fused=True)
    eager = FeatureLoss("vgg19", "style", weights=None, distance="l1", fused=False)
    eager.net.load_state_dict(fused.net.state_dict())  # the loss's state_dict leaves the network out
    torch.testing.assert_close(fused.per_layer(x, y), eager.per_layer(x, y), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(fused.per_layer(x, y), FeatureLoss("vgg19", "style", weights=None).per_layer(x, y))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_l1_cuda_matches_cpu_kernel(dtype):
    a, b, w = make(3, [(64, 17, 19), (32, 8, 8)], dtype, "cpu", ties=True)
    cpu = op(a, b, w, 1)
    gpu = op([t.cuda() for t in a], [t.cuda() for t in b], w, 1).cpu()
    torch.testing.assert_close(gpu, cpu, **TOL[dtype])
    g = torch.rand(3, 2)
    ga_cpu, gb_cpu = op_backward(g, a, b, w, True, True, 1)
    ga_gpu, gb_gpu = op_backward(g.cuda(), [t.cuda() for t in a], [t.cuda() for t in b], w, True, True, 1)
    for x, y in zip(ga_cpu + gb_cpu, ga_gpu + gb_gpu):
        torch.testing.assert_close(y.cpu(), x, **TOL[dtype])
