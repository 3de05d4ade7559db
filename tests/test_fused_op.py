"""The fused operator against the pure-PyTorch reference, for both norms (p=2 squared, p=1 absolute difference):
values, gradients, the L1 subgradient, layouts, dtypes, compile, errors, and the losses on top of it.

Paths the kernels branch on (alignment, storage offsets, N=0, many work items, large offsets, CUDA graphs, a
second device) are in test_cuda_paths.py, second-order gradients in test_double_backward.py.
"""
import pytest
import torch

import perceptloss
from perceptloss import FeatureLoss
from perceptloss.functional import feature_distance, feature_distance_reference
from perceptloss.preprocessing import IDENTITY

from .helpers import assert_close, assert_equal

pytestmark = pytest.mark.skipif(not perceptloss.HAS_EXT, reason="fused operator not built")
op = torch.ops.perceptloss.feature_distance if perceptloss.HAS_EXT else None
op_backward = torch.ops.perceptloss.feature_distance_backward if perceptloss.HAS_EXT else None

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
NORMS = [2, 1]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=1e-3),
       torch.bfloat16: dict(rtol=1e-2, atol=1e-2), torch.float64: dict(rtol=1e-12, atol=1e-12)}

SHAPES = [  # (N, [(C, H, W) per layer])
    (2, [(4, 5, 5), (8, 3, 3)]),
    (1, [(3, 1, 1)]),                              # 1x1 maps, N=1
    (3, [(7, 13, 11), (1, 1, 1), (64, 9, 9)]),     # odd sizes
    (2, [(16, 32, 33)]),                           # larger than one work chunk per sample after ×N
    (2, [(2, 3, 3)] * 30),                         # many layers (more than one CUDA launch group)
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
@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n, shapes", SHAPES)
def test_forward_and_backward_match_reference(device, p, dtype, n, shapes):
    a, b, w = make(n, shapes, dtype, device, requires_grad=True, ties=p == 1)  # ties: the L1 subgradient 0
    out = op(a, b, w, p)
    ref = feature_distance_reference([t.double() for t in a], [t.double() for t in b], w, p=p)
    manual = torch.stack([wl * ((x.double() - y.double()).abs() ** p).flatten(1).mean(1)
                          for x, y, wl in zip(a, b, w)], dim=1)
    assert_close(ref, manual)
    assert out.shape == (n, len(shapes))
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])
    g = torch.rand(n, len(shapes), dtype=out.dtype, device=device)
    grads = torch.autograd.grad(out, a + b, g)
    a64 = [t.detach().double().requires_grad_() for t in a]
    b64 = [t.detach().double().requires_grad_() for t in b]
    ref_grads = torch.autograd.grad(feature_distance_reference(a64, b64, w, p=p), a64 + b64, g.double())
    for got, exp in zip(grads, ref_grads):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), exp, **TOL[dtype])
    # the closed form: p w/(CHW) (a - b)^(p-1) g, with sign for p = 1, and grad_b = -grad_a
    for x, y, wl, ga, gb, col in zip(a, b, w, grads[: len(a)], grads[len(a):], g.T):
        scale = (p * wl / x[0].numel() * col.double()).view(-1, *[1] * (x.dim() - 1))
        d = x.detach().double() - y.detach().double()
        expected = (d if p == 2 else torch.sign(d)) * scale
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
@pytest.mark.parametrize("p", NORMS)
def test_channels_last_noncontiguous_and_mixed_layouts(device, p):
    a, b, w = make(2, [(8, 6, 5), (4, 7, 7)], torch.float32, device)
    ref = op(a, b, w, p)
    cl = [t.to(memory_format=torch.channels_last) for t in a]
    assert_close(op(cl, [t.to(memory_format=torch.channels_last) for t in b], w, p), ref)
    assert_close(op(cl, b, w, p), ref)  # input channels_last, target NCHW
    wide = [torch.stack([t, t], dim=-1)[..., 0] for t in a]  # strided views equal to a
    assert_close(op(wide, b, w, p), ref)
    assert_close(op(a, [torch.stack([t, t], dim=-1)[..., 0] for t in b], w, p), ref)  # strided b
    perm = [t.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2) for t in a]  # dense, H/W swapped in memory
    assert_close(op(perm, b, w, p), ref)
    ga = [t.clone().requires_grad_() for t in cl]
    (op(ga, b, w, p) * torch.arange(1.0, 3.0, device=device)[:, None]).sum().backward()
    ra = [t.clone().requires_grad_() for t in a]
    (feature_distance_reference(ra, b, w, p=p) * torch.arange(1.0, 3.0, device=device)[:, None]).sum().backward()
    for x, y in zip(ga, ra):
        assert_close(x.grad, y.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", NORMS)
def test_gradcheck_float64(device, p):
    a, b, w = make(2, [(3, 4, 4), (5, 2, 3)], torch.float64, device, requires_grad=True)  # no ties: differentiable
    assert torch.autograd.gradcheck(lambda *t: op(list(t[:2]), list(t[2:]), w, p), (*a, *b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", NORMS)
def test_only_the_grads_that_are_needed(device, p):
    a, b, w = make(2, [(3, 4, 4), (5, 2, 3)], torch.float32, device)
    a[0].requires_grad_()
    b[1].requires_grad_()
    op(a, b, w, p).sum().backward()
    assert a[0].grad is not None and b[1].grad is not None and a[1].grad is None and b[0].grad is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", NORMS)
def test_opcheck(device, p):
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
@pytest.mark.parametrize("p", NORMS)
def test_deterministic(device, p):
    a, b, w = make(4, [(64, 40, 40), (128, 20, 20)], torch.float32, device)
    first = op(a, b, w, p)
    for _ in range(3):
        assert torch.equal(op(a, b, w, p), first)


@pytest.mark.parametrize("p", NORMS)
def test_results_do_not_depend_on_thread_count(p):
    a, b, w = make(3, [(64, 40, 40), (8, 5, 5)], torch.float32, "cpu")
    threads = torch.get_num_threads()
    try:
        # The threads split the elements (not the items) evenly: 2 and 3 threads cut inside different layers.
        torch.set_num_threads(1)
        one = op(a, b, w, p)
        for count in (2, 3, max(2, threads)):
            torch.set_num_threads(count)
            assert torch.equal(op(a, b, w, p), one)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", NORMS)
def test_compile_fullgraph_no_graph_breaks(device, p, backend):
    a, b, w = make(2, [(3, 4, 4), (5, 3, 3)], torch.float32, device, requires_grad=True)

    def f(xs, ys):
        return (op(xs, ys, w, p) * 2).sum()

    def g(xs, ys):  # through the Python entry point
        return (feature_distance(xs, ys, w, fused=True, p=p) * 2).sum()

    for fn in (f, g):
        expected = fn(a, b)
        eager_grads = torch.autograd.grad(expected, a + b)
        got = torch.compile(fn, fullgraph=True, backend=backend)(a, b)
        assert_close(got, expected)
        for x, y in zip(torch.autograd.grad(got, a + b), eager_grads):
            assert_close(x, y)


def test_errors_are_clear():
    a, b, w = make(2, [(3, 4, 4)], torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="empty list"):  # the dispatcher's own words: no tensor to dispatch on
        op([], [], [])
    with pytest.raises(RuntimeError, match="one of each per layer"):
        op(a, b, [1.0, 2.0])
    with pytest.raises(RuntimeError, match="shapes differ"):
        op(a, [torch.randn(2, 3, 4, 5)], w)
    with pytest.raises(RuntimeError, match="dtypes"):
        op(a, [b[0].double()], w)
    with pytest.raises(RuntimeError, match="empty samples"):
        op([torch.randn(2, 3, 0, 4)], [torch.randn(2, 3, 0, 4)], w)
    with pytest.raises(RuntimeError, match="batch"):
        op(a + [torch.randn(3, 1, 1, 1)], b + [torch.randn(3, 1, 1, 1)], w + [1.0])
    # the Python entry point checks before dispatching, with the same words
    with pytest.raises(ValueError, match="at least one layer"):
        feature_distance([], [], [])
    with pytest.raises(ValueError, match="differ"):
        feature_distance(a, [torch.randn(2, 3, 4, 5)], w, fused=True)


def test_bad_p_is_a_clear_error():
    a, b, w = make(2, [(3, 4, 4)], torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="p must be 1"):
        op(a, b, w, 3)
    with pytest.raises(ValueError, match="p must be 1"):
        feature_distance(a, b, w, p=3)
    with pytest.raises(ValueError, match="distance must be 'l2'"):
        FeatureLoss("vgg19", "dfc123", weights=None, distance="L1")


def test_feature_loss_uses_the_fused_op_with_identical_results(caffe_weights):
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    fused = perceptloss.FeatureLoss("vgg19", "style", fused=True)
    eager = perceptloss.FeatureLoss("vgg19", "style", fused=False)
    assert_close(fused.per_layer(x, y), eager.per_layer(x, y), rtol=1e-5, atol=1e-3)


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
        assert_close(loss(x, y), manual)
    assert torch.autograd.gradcheck(lambda a: losses[None](a, y + 0.25), (x,))  # ReLU zeros tie: shift y
    assert "distance='l1'" in repr(losses[None])


def test_feature_loss_l1_vgg_fused_equals_eager():
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    torch.manual_seed(0)
    fused = FeatureLoss("vgg19", "style", weights=None, distance="l1", fused=True)
    eager = FeatureLoss("vgg19", "style", weights=None, distance="l1", fused=False)
    eager.net.load_state_dict(fused.net.state_dict())  # the loss's state_dict leaves the network out
    assert_close(fused.per_layer(x, y), eager.per_layer(x, y), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(fused.per_layer(x, y), FeatureLoss("vgg19", "style", weights=None).per_layer(x, y))


@pytest.mark.cuda
def test_cuda_graph_capture_and_replay():
    a, b, w = make(4, [(64, 32, 32), (128, 16, 16), (3, 5, 7)], torch.float32, "cuda")
    static_a = [t.clone() for t in a]
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        op(static_a, b, w)  # warm-up on the side stream
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = op(static_a, b, w)
    for seed in (1, 2):
        fresh, _, _ = make(4, [(64, 32, 32), (128, 16, 16), (3, 5, 7)], torch.float32, "cuda", seed=seed)
        for s, f in zip(static_a, fresh):
            s.copy_(f)
        graph.replay()
        assert_equal(static_out, op(fresh, b, w))


@pytest.mark.cuda
@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu_kernel(p, dtype):
    a, b, w = make(3, [(64, 17, 19), (32, 8, 8)], dtype, "cpu", ties=p == 1)
    cpu = op(a, b, w, p)
    gpu = op([t.cuda() for t in a], [t.cuda() for t in b], w, p).cpu()
    torch.testing.assert_close(gpu, cpu, **TOL[dtype])
    g = torch.rand(3, 2)
    ga_cpu, gb_cpu = op_backward(g, a, b, w, True, True, p)
    ga_gpu, gb_gpu = op_backward(g.cuda(), [t.cuda() for t in a], [t.cuda() for t in b], w, True, True, p)
    for x, y in zip(ga_cpu + gb_cpu, ga_gpu + gb_gpu):
        torch.testing.assert_close(y.cpu(), x, **TOL[dtype])
