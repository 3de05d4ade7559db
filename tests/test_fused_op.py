"""The fused operator against the pure-PyTorch reference: values, gradients, layouts, dtypes, errors."""
import pytest
import torch

import perceptloss
from perceptloss.functional import feature_distance, feature_distance_reference

pytestmark = pytest.mark.skipif(not perceptloss.HAS_EXT, reason="fused operator not built")
op = torch.ops.perceptloss.feature_distance if perceptloss.HAS_EXT else None

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=1e-3),
       torch.bfloat16: dict(rtol=1e-2, atol=1e-2), torch.float64: dict(rtol=1e-12, atol=1e-12)}

SHAPES = [  # (N, [(C, H, W) per layer])
    (2, [(4, 5, 5), (8, 3, 3)]),
    (1, [(3, 1, 1)]),                              # 1x1 maps, N=1
    (3, [(7, 13, 11), (1, 1, 1), (64, 9, 9)]),     # odd sizes
    (2, [(16, 32, 33)]),                           # larger than one work chunk per sample after ×N
    (2, [(2, 3, 3)] * 30),                         # many layers (more than one CUDA launch group)
]


def make(n, shapes, dtype, device, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(n, *s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_(requires_grad) for s in shapes]
    b = [torch.randn(n, *s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_(requires_grad) for s in shapes]
    w = [0.5 + i for i in range(len(shapes))]
    return a, b, w


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n, shapes", SHAPES)
def test_forward_and_backward_match_reference(device, dtype, n, shapes):
    a, b, w = make(n, shapes, dtype, device, requires_grad=True)
    out = op(a, b, w)
    ref = feature_distance_reference([t.double() for t in a], [t.double() for t in b], w)
    assert out.shape == (n, len(shapes))
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])
    g = torch.rand(n, len(shapes), dtype=out.dtype, device=device)
    grads = torch.autograd.grad(out, a + b, g)
    a64 = [t.detach().double().requires_grad_() for t in a]
    b64 = [t.detach().double().requires_grad_() for t in b]
    ref_grads = torch.autograd.grad(feature_distance_reference(a64, b64, w), a64 + b64, g.double())
    for got, exp in zip(grads, ref_grads):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), exp, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_noncontiguous_and_mixed_layouts(device):
    a, b, w = make(2, [(8, 6, 5), (4, 7, 7)], torch.float32, device)
    ref = op(a, b, w)
    cl = [t.to(memory_format=torch.channels_last) for t in a]
    torch.testing.assert_close(op(cl, [t.to(memory_format=torch.channels_last) for t in b], w), ref)
    torch.testing.assert_close(op(cl, b, w), ref)  # input channels_last, target NCHW
    wide = [torch.stack([t, t], dim=-1)[..., 0] for t in a]  # strided views equal to a
    torch.testing.assert_close(op(wide, b, w), ref)
    perm = [t.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2) for t in a]  # dense, H/W swapped in memory
    torch.testing.assert_close(op(perm, b, w), ref)
    ga = [t.clone().requires_grad_() for t in cl]
    (op(ga, b, w) * torch.arange(1.0, 3.0, device=device)[:, None]).sum().backward()
    ra = [t.clone().requires_grad_() for t in a]
    (feature_distance_reference(ra, b, w) * torch.arange(1.0, 3.0, device=device)[:, None]).sum().backward()
    for x, y in zip(ga, ra):
        torch.testing.assert_close(x.grad, y.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    a, b, w = make(2, [(3, 4, 4), (5, 2, 3)], torch.float64, device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: op(list(t[:2]), list(t[2:]), w), (*a, *b))


@pytest.mark.parametrize("device", DEVICES)
def test_only_the_grads_that_are_needed(device):
    a, b, w = make(2, [(3, 4, 4), (5, 2, 3)], torch.float32, device)
    a[0].requires_grad_()
    b[1].requires_grad_()
    op(a, b, w).sum().backward()
    assert a[0].grad is not None and b[1].grad is not None and a[1].grad is None and b[0].grad is None


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    a, b, w = make(2, [(3, 4, 4), (5, 3, 3)], torch.float32, device, requires_grad=True)
    torch.library.opcheck(op, (a, b, w))
    g = torch.rand(2, 2, device=device)
    torch.library.opcheck(
        torch.ops.perceptloss.feature_distance_backward, (g, [t.detach() for t in a], [t.detach() for t in b], w, True, True)
    )


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    a, b, w = make(4, [(64, 40, 40), (128, 20, 20)], torch.float32, device)
    first = op(a, b, w)
    for _ in range(3):
        assert torch.equal(op(a, b, w), first)


def test_results_do_not_depend_on_thread_count():
    a, b, w = make(3, [(64, 40, 40), (8, 5, 5)], torch.float32, "cpu")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = op(a, b, w)
        torch.set_num_threads(max(2, threads))
        assert torch.equal(op(a, b, w), one)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph_no_graph_breaks(device):
    a, b, w = make(2, [(3, 4, 4), (5, 3, 3)], torch.float32, device, requires_grad=True)

    def f(xs, ys):
        return (op(xs, ys, w) * 2).sum()

    expected = f(a, b)
    got = torch.compile(f, fullgraph=True)(a, b)
    torch.testing.assert_close(got, expected)
    got.backward()
    assert all(t.grad is not None for t in a + b)


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


def test_feature_loss_uses_the_fused_op_with_identical_results(caffe_weights):
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    fused = perceptloss.FeatureLoss("vgg19", "style", fused=True)
    eager = perceptloss.FeatureLoss("vgg19", "style", fused=False)
    torch.testing.assert_close(fused.per_layer(x, y), eager.per_layer(x, y), rtol=1e-5, atol=1e-3)


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
        torch.testing.assert_close(static_out, op(fresh, b, w), rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu_kernel(dtype):
    a, b, w = make(3, [(64, 17, 19), (32, 8, 8)], dtype, "cpu")
    cpu = op(a, b, w)
    gpu = op([t.cuda() for t in a], [t.cuda() for t in b], w).cpu()
    torch.testing.assert_close(gpu, cpu, **TOL[dtype])
