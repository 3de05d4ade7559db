"""The fused operator's unit-normalised distance (``unit_feature_distance``: LPIPS' distance and the "cosine"
feature distance in one pass on the CPU) against its plain-PyTorch reference: values and gradients at every CPU
level, layouts, zero vectors, identical inputs, second order, compile, errors, and the criteria on top of it."""
import pytest
import torch

import perceptloss
from perceptloss import FeatureLoss, LPIPS
from perceptloss.backends import has_kernel
from perceptloss.backends.cpu import forced_kernel_level, kernel_levels
from perceptloss.functional import unit_feature_distance, unit_feature_distance_reference

from .helpers import assert_close, assert_equal
from .test_fused_op import TOL

pytestmark = pytest.mark.skipif(not (perceptloss.HAS_EXT and has_kernel("cpu")), reason="fused CPU operator not built")
op = torch.ops.perceptloss.unit_feature_distance if perceptloss.HAS_EXT else None
op_backward = torch.ops.perceptloss.unit_feature_distance_backward if perceptloss.HAS_EXT else None
LEVELS = kernel_levels() if perceptloss.HAS_EXT and has_kernel("cpu") else []
LAYOUTS = ["channels_last", "contiguous", "vectors", "sequences", "volumes"]


def make(dtype, layout, seed=0):
    """Features of 4 layers (channel counts around the vector widths, odd sizes), ReLU-like (>= 0); sample 0's
    first layer all zero (norm 0 everywhere), sample 1's target equal to its input (the same norm), weights.
    float16 gets neither zero nor small norms: the gradient grows as 1 / |a| (t / eps at 0), beyond its range."""
    g = torch.Generator().manual_seed(seed)
    a, b, c = [], [], []
    for ch, h in ((3, 5), (64, 9), (37, 4), (130, 3)):
        shape = {"vectors": (3, ch), "sequences": (3, ch, 3 * h), "volumes": (3, ch, 2, h, h + 1)}.get(layout, (3, ch, h, h + 1))
        x = torch.randn(shape, generator=g, dtype=torch.float64).relu()
        y = torch.randn(shape, generator=g, dtype=torch.float64).relu()
        y[1] = x[1]
        if dtype == torch.float16:
            x, y = x + 0.25, y + 0.25
        elif len(a) == 0:
            x[0] = 0
        x, y = x.to(dtype), y.to(dtype)
        if layout in ("channels_last", "volumes"):
            fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
            x, y = x.contiguous(memory_format=fmt), y.contiguous(memory_format=fmt)
        a.append(x.requires_grad_())
        b.append(y.requires_grad_())
        c.append(torch.rand(ch, generator=g, dtype=torch.float64).to(torch.float64 if dtype == torch.float64 else torch.float32))
    return a, b, c, [0.5, 1.0, 2.0, 1.5]


def reference_and_grads(a, b, c, w, g):
    a64 = [t.detach().double().requires_grad_() for t in a]
    b64 = [t.detach().double().requires_grad_() for t in b]
    ref = unit_feature_distance_reference(a64, b64, [x.double() for x in c], w)
    return ref.detach(), torch.autograd.grad(ref, a64 + b64, g.double())


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_level_matches_the_reference(level, dtype, layout):
    a, b, c, w = make(dtype, layout)
    with forced_kernel_level(level):
        out = op(a, b, c, w)
        g = torch.rand(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad(out, a + b, g)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    ref, ref_grads = reference_and_grads(a, b, c, w, g)
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])
    for got, exp, src in zip(grads, ref_grads, a + b):
        assert got.dtype == dtype and got.stride() == src.stride()
        torch.testing.assert_close(got.double(), exp, **TOL[dtype])


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_identical_features_give_exactly_zero(level, dtype):
    # a fused multiply-add contracted into a ia - b ib would leave ~1e-16 here (the kernels take (a - b) ia)
    a, _, c, w = make(dtype, "channels_last")
    b = [t.detach().clone() for t in a]
    with forced_kernel_level(level):
        out = op(a, b, c, w)
        grads = torch.autograd.grad(out.sum(), a)
    assert_equal(out, torch.zeros_like(out))
    for g in grads:
        assert_equal(g, torch.zeros_like(g))


def test_gradients_first_and_second_order_in_float64():
    g = torch.Generator().manual_seed(3)
    a = [torch.rand(2, 5, 3, 4, generator=g, dtype=torch.float64).requires_grad_(),
         torch.rand(2, 7, 2, 2, generator=g, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()]
    b = [torch.rand(t.shape, generator=g, dtype=torch.float64).requires_grad_() for t in a]
    c = [torch.rand(t.shape[1], generator=g, dtype=torch.float64).requires_grad_() for t in a]

    def f(*args):
        return op(list(args[:2]), list(args[2:4]), list(args[4:]), [0.7, 1.3], 1e-10)

    torch.autograd.gradcheck(f, (*a, *b, *c))  # channel weights too: the torch-ops backward
    torch.autograd.gradcheck(f, (*a, *b, *[t.detach() for t in c]))  # the kernel's backward
    torch.autograd.gradgradcheck(f, (*a, *b, *[t.detach() for t in c]))


def test_kernel_backward_equals_the_torch_ops_backward():
    a, b, c, w = make(torch.float64, "channels_last")
    g = torch.rand(a[0].shape[0], len(a), dtype=torch.float64)
    kernel = op_backward(g, a, b, c, w, 1e-10, True, True)
    out = op(a, b, c, w)
    torch_ops = torch.autograd.grad(out, a + b, g, create_graph=True)  # create_graph: the torch-ops backward
    for got, exp in zip(kernel[0] + kernel[1], torch_ops):
        assert_close(got, exp.detach(), rtol=1e-12, atol=1e-14)


def test_opcheck():
    a, b, c, w = make(torch.float32, "channels_last")
    a, b = [t.detach() for t in a], [t.detach() for t in b]
    torch.library.opcheck(op, (a, b, c, w, 1e-10))
    torch.library.opcheck(op_backward, (torch.rand(3, 4), a, b, c, w, 1e-10, True, False))


def test_compiled_forward_and_backward_match_eager():
    a, b, c, w = make(torch.float32, "channels_last")

    def f(a, b):
        return unit_feature_distance(a, b, c, w).sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=False)
    got = compiled(a, b)
    grads = torch.autograd.grad(got, a)
    exp = f(a, b)
    assert_close(got, exp)
    for x, y in zip(grads, torch.autograd.grad(exp, a)):
        assert_close(x, y)


def test_functional_paths_agree():
    a, b, c, w = make(torch.float32, "channels_last")
    fused = unit_feature_distance(a, b, c, w, fused=True)
    plain = unit_feature_distance(a, b, c, w, fused=False)
    assert_close(fused, plain)
    assert_close(unit_feature_distance(a, b, None, w), unit_feature_distance(a, b, [torch.ones_like(x) for x in c], w))


def test_bad_arguments_say_what_to_do():
    a, b, c, w = make(torch.float32, "channels_last")
    with pytest.raises(ValueError, match=r"layer 1: channel weights must be a floating \(64,\) tensor"):
        unit_feature_distance(a, b, [c[0], c[0], c[2], c[3]], w)
    with pytest.raises(ValueError, match="give one \\(C_l,\\) tensor per layer"):
        unit_feature_distance(a, b, c[:2], w)
    with pytest.raises(ValueError, match="eps"):
        unit_feature_distance(a, b, c, w, eps=-1.0)
    with pytest.raises(RuntimeError, match="channel weights have shape"):
        op(a, b, [c[0]] * 4, w)
    with pytest.raises(RuntimeError, match="eps must be finite"):
        op(a, b, c, w, float("nan"))


def test_losses_run_on_it_and_match_the_reference():
    x, y = torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    for make_loss in (lambda fused: LPIPS("alex", weights=None, fused=fused),
                      lambda fused: FeatureLoss("vgg19", ["relu1_2", "relu3_1"], weights=None, distance="cosine",
                                                fused=fused)):
        fused, plain = make_loss(None), make_loss(False)
        plain.load_state_dict(fused.state_dict())
        plain.net.load_state_dict(fused.net.state_dict())
        xs = x.clone().requires_grad_()
        value = fused(xs, y)
        (grad,) = torch.autograd.grad(value.sum(), xs)
        xs2 = x.clone().requires_grad_()
        expected = plain(xs2, y)
        (expected_grad,) = torch.autograd.grad(expected.sum(), xs2)
        assert_close(value, expected)
        assert_close(grad, expected_grad)
