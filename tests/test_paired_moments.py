"""The fused operator's ``paired_moments`` (DISTS' per-channel means, variances and covariance in one pass on the
CPU) against the plain-PyTorch reference: every CPU level, dtype and layout, runs of positions merged across work
items, thread counts, gradients to second order, compile, and DISTS on top of it."""
import pytest
import torch

import perceptloss
from perceptloss import DISTS
from perceptloss.backends import has_kernel
from perceptloss.backends.cpu import forced_kernel_level, kernel_levels
from perceptloss.dists import paired_moments, paired_moments_reference

from .helpers import assert_close, assert_equal
from .test_fused_op import TOL

pytestmark = pytest.mark.skipif(not (perceptloss.HAS_EXT and has_kernel("cpu")), reason="fused CPU operator not built")
op = torch.ops.perceptloss.paired_moments if perceptloss.HAS_EXT else None
LEVELS = kernel_levels() if perceptloss.HAS_EXT and has_kernel("cpu") else []


def make(dtype, layout, seed=0):
    """Features of 4 layers: channel counts around the vector widths, odd sizes, one layer of 3 channels over
    160x130 positions (two work items per sample, merged), offsets far from 0 (the centred variances)."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for ch, h, w in ((3, 160, 130), (64, 9, 10), (37, 4, 5), (130, 3, 4)):
        x = (torch.rand(2, ch, h, w, generator=g, dtype=torch.float64) + 3).to(dtype)
        y = (torch.rand(2, ch, h, w, generator=g, dtype=torch.float64) * 2).to(dtype)
        if layout == "channels_last":
            x, y = x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)
        xs.append(x.requires_grad_())
        ys.append(y.requires_grad_())
    return xs, ys


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_every_level_matches_the_reference(level, dtype, layout):
    xs, ys = make(dtype, layout)
    with forced_kernel_level(level):
        got = op(xs, ys)
    for m, x, y in zip(got, xs, ys):
        assert m.shape == (5, x.shape[0], x.shape[1])
        assert m.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        expected = paired_moments_reference(x.detach().double(), y.detach().double())
        # float32 sums of bf16/fp16 values: the reduced types' TOL; float32 to a float32 sum's rounding
        torch.testing.assert_close(m.double(), expected, **({torch.float32: dict(rtol=1e-5, atol=1e-6)}.get(dtype, TOL[dtype])))


def test_results_do_not_depend_on_the_thread_count():
    xs, ys = make(torch.float32, "channels_last")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = op(xs, ys)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, op(xs, ys)):
        assert_equal(a, b)


def test_gradients_first_and_second_order_in_float64():
    g = torch.Generator().manual_seed(3)
    xs = [torch.rand(2, 5, 3, 4, generator=g, dtype=torch.float64).requires_grad_(),
          torch.rand(2, 7, 2, 3, generator=g, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()]
    ys = [torch.rand(t.shape, generator=g, dtype=torch.float64).requires_grad_() for t in xs]

    def f(*args):
        return tuple(op(list(args[:2]), list(args[2:])))

    torch.autograd.gradcheck(f, (*xs, *ys))
    torch.autograd.gradgradcheck(f, (*xs, *ys))


def test_opcheck_and_compile():
    xs, ys = make(torch.float32, "channels_last")
    torch.library.opcheck(op, ([x.detach() for x in xs], [y.detach() for y in ys]))

    def f(xs, ys):
        return sum(m.sum() for m in paired_moments(xs, ys))

    got = torch.compile(f, fullgraph=True, dynamic=False)(xs, ys)
    assert_close(got, f(xs, ys))


def test_dists_on_the_operator_matches_plain_pytorch():
    torch.manual_seed(0)
    fused, plain = DISTS(weights=None), DISTS(weights=None, fused=False)
    plain.net.load_state_dict(fused.net.state_dict())
    x, y = torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    va, vb = fused(xa, y), plain(xb, y)
    assert_close(va, vb)
    (ga,), (gb,) = torch.autograd.grad(va.sum(), xa), torch.autograd.grad(vb.sum(), xb)
    assert_close(ga, gb)
    with pytest.raises(RuntimeError, match="fused operator"):
        paired_moments([x.to("meta")], [y.to("meta")], fused=True)
