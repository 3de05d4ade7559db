"""Second-order gradients through the fused operator (create_graph=True): equal to the pure-PyTorch path.

``feature_distance_backward`` has its own derivative (perceptloss/_ops.py), so gradient penalties and
Hessian-vector products through the fused operator are exact, for p = 2 and p = 1, in every loss.
"""
import pytest
import torch

import perceptloss
from perceptloss.functional import feature_distance_reference
from .helpers import assert_close

pytestmark = pytest.mark.skipif(not perceptloss.HAS_EXT, reason="fused operator not built")
op = torch.ops.perceptloss.feature_distance if perceptloss.HAS_EXT else None
op_backward = torch.ops.perceptloss.feature_distance_backward if perceptloss.HAS_EXT else None
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def make(device, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 4, 4), (5, 2, 3)]
    a = [torch.randn(2, *s, generator=g, dtype=dtype).to(device).requires_grad_() for s in shapes]
    b = [torch.randn(2, *s, generator=g, dtype=dtype).to(device).requires_grad_() for s in shapes]
    return a, b, [0.5, 1.5]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [1, 2])
def test_gradgradcheck_float64(device, p):
    a, b, w = make(device)
    assert torch.autograd.gradgradcheck(lambda *t: op(list(t[:2]), list(t[2:]), w, p), (*a, *b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [1, 2])
def test_backward_op_gradcheck_and_gradgradcheck(device, p):
    """The backward operator's own derivative (wrt grad, inputs and targets) against finite differences."""
    a, b, w = make(device)
    grad = torch.rand(2, 2, dtype=torch.float64, device=device, requires_grad=True)

    def f(g, *t):
        ga, gb = op_backward(g, list(t[:2]), list(t[2:]), w, True, True, p)
        return (*ga, *gb)

    assert torch.autograd.gradcheck(f, (grad, *a, *b))
    assert torch.autograd.gradgradcheck(f, (grad, *a, *b))


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("input_grad, target_grad", [(True, False), (False, True)])
def test_backward_op_derivative_with_one_side(p, input_grad, target_grad):
    a, b, w = make("cpu")
    grad = torch.rand(2, 2, dtype=torch.float64, requires_grad=True)

    def f(g, *t):
        ga, gb = op_backward(g, list(t[:2]), list(t[2:]), w, input_grad, target_grad, p)
        return (*ga, *gb)

    assert torch.autograd.gradcheck(f, (grad, *a, *b))


@pytest.mark.parametrize("p", [1, 2])
def test_hessian_vector_product_matches_reference(p):
    a, b, w = make("cpu")
    outer = torch.rand(2, 2, dtype=torch.float64)

    def second_order(dist, xs, ys):
        g = torch.autograd.grad((dist(xs, ys, w, p) * outer).sum(), xs + ys, create_graph=True)
        return torch.autograd.grad(sum(t.square().sum() for t in g), xs + ys, allow_unused=True, materialize_grads=True)

    fused = second_order(lambda *args: op(*args), a, b)
    ref = second_order(lambda x, y, w, p: feature_distance_reference(x, y, w, p=p), a, b)
    for got, exp in zip(fused, ref):
        assert_close(got, exp, rtol=1e-12, atol=1e-12)


def test_backward_op_compiles_fullgraph():
    """The backward operator (fake kernel and its autograd registration) traces under torch.compile: captured with
    fake tensors through aot_autograd (``aot_eager``; inductor's code generation is the forward op's tests' job).

    (Double backward through a compiled graph is not supported by torch.compile's aot_autograd itself.)
    """
    a, b, w = make("cpu", dtype=torch.float32)
    g = torch.rand(2, 2)

    def f(g, xs, ys):
        ga, gb = op_backward(g, xs, ys, w, True, True, 2)
        return sum(t.square().sum() for t in ga + gb)

    expected = f(g, a, b)
    assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(g, a, b), expected)


def _second_order(loss, x, y):
    """d/dx of |d loss / dx|^2, the gradient-penalty pattern."""
    x = x.clone().requires_grad_()
    g, = torch.autograd.grad(loss(x, y), x, create_graph=True)
    h, = torch.autograd.grad(g.square().sum(), x)
    return h


def _assert_fused_equals_eager(make_loss, shape=(2, 3, 32, 32), nonzero=True):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(*shape, generator=gen), torch.rand(*shape, generator=gen)
    torch.manual_seed(1)
    fused = make_loss(True)
    torch.manual_seed(1)
    eager = make_loss(False)
    h_fused, h_eager = _second_order(fused, x, y), _second_order(eager, x, y)
    if nonzero:  # an L1 distance over a ReLU network is piecewise linear: its second derivative is 0 a.e.
        assert h_eager.abs().max() > 0
    assert_close(h_fused, h_eager, rtol=1e-5, atol=1e-5 * h_eager.abs().max().item())


@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_feature_loss_second_order_equals_unfused(distance):
    _assert_fused_equals_eager(
        lambda fused: perceptloss.FeatureLoss("vgg19", "dfc123", weights=None, fused=fused, distance=distance),
        nonzero=distance == "l2",
    )


def test_style_loss_second_order_equals_unfused():
    _assert_fused_equals_eager(lambda fused: perceptloss.StyleLoss("vgg19", "style", weights=None, fused=fused))


def test_lpips_second_order_equals_unfused():
    _assert_fused_equals_eager(
        lambda fused: perceptloss.LPIPS("alex", weights=None, heads=None, fused=fused, reduction="sum"),
        shape=(2, 3, 64, 64),
    )
