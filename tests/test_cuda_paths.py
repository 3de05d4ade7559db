"""The paths the kernels branch on, each on the CPU (run on every CI) and on CUDA (marked ``cuda``).

Mixed 16-byte alignment of a and b (the CUDA kernels fall back to scalar loads), gradient buffers aligned unlike
a (fresh gradients are aligned; a misaligned a is not), storage offsets, N = 0 (an empty (0, L) output and empty
gradients on every device), channels_last gradients in reduced precision, more work items than CPU threads or
CUDA blocks (the persistent grid's second iteration), and CUDA-only: the backward under CUDA-graph capture, a
second device, offsets of 2^31 elements and more.
"""
import pytest
import torch

import perceptloss
from perceptloss.functional import feature_distance, feature_distance_reference

from .test_fused_op import NORMS, TOL, make
from .helpers import assert_close, assert_equal

pytestmark = pytest.mark.skipif(not perceptloss.HAS_EXT, reason="fused operator not built")
op = torch.ops.perceptloss.feature_distance if perceptloss.HAS_EXT else None
op_backward = torch.ops.perceptloss.feature_distance_backward if perceptloss.HAS_EXT else None
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def check_against_reference(a, b, w, p, dtype):
    """Forward and both gradients of the operator against the float64 reference."""
    a = [t.detach().requires_grad_() for t in a]
    b = [t.detach().requires_grad_() for t in b]
    out = op(a, b, w, p)
    a64 = [t.detach().double().requires_grad_() for t in a]
    b64 = [t.detach().double().requires_grad_() for t in b]
    ref = feature_distance_reference(a64, b64, w, p=p)
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])
    g = torch.rand(out.shape, dtype=out.dtype, device=out.device)
    grads = torch.autograd.grad(out, a + b, g)
    for got, exp, like in zip(grads, torch.autograd.grad(ref, a64 + b64, g.double()), a + b):
        assert got.shape == like.shape and got.dtype == like.dtype
        torch.testing.assert_close(got.double(), exp, **TOL[dtype])
    return grads


def offset_copy(t: torch.Tensor, elements: int) -> torch.Tensor:
    """A contiguous copy of ``t`` that starts ``elements`` elements into its storage (so not 16-byte aligned)."""
    flat = torch.empty(t.numel() + elements, dtype=t.dtype, device=t.device)
    out = flat[elements:].view(t.shape)
    out.copy_(t)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("offset_a, offset_b", [(1, 0), (0, 3), (2, 1), (4, 4)])
def test_mixed_alignment_and_storage_offsets(device, p, dtype, offset_a, offset_b):
    a, b, w = make(2, [(5, 37, 3), (64, 9, 9)], dtype, device, ties=p == 1)
    a = [offset_copy(t, offset_a) for t in a]
    b = [offset_copy(t, offset_b) for t in b]
    assert a[0].storage_offset() == offset_a and b[0].storage_offset() == offset_b
    grads = check_against_reference(a, b, w, p, dtype)
    if offset_a % (16 // a[0].element_size()):
        # fresh gradients start at the beginning of their allocation: aligned unlike a
        assert any(g.data_ptr() % 16 != t.data_ptr() % 16 for g, t in zip(grads, a))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", NORMS)
def test_a_batch_slice_starts_inside_its_storage(device, p):
    a, b, w = make(5, [(8, 6, 5), (4, 7, 7)], torch.float32, device)
    check_against_reference([t[2:4] for t in a], [t[1:3] for t in b], w, p, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", NORMS)
def test_empty_batch_gives_an_empty_result_on_every_device(device, p):
    a, b, w = make(0, [(3, 4, 4), (5, 2, 3)], torch.float32, device, requires_grad=True)
    out = op(a, b, w, p)
    assert out.shape == (0, 2) and out.dtype == torch.float32 and out.device == a[0].device
    grads = torch.autograd.grad(out.sum(), a + b)
    assert [g.shape for g in grads] == [t.shape for t in a + b]
    ga, gb = op_backward(torch.zeros(0, 2, device=device), a, b, w, True, False, p)
    assert [t.shape for t in ga] == [t.shape for t in a] and gb == []
    assert_close(feature_distance(a, b, w, fused=False, p=p), out)  # the same as the reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_channels_last_gradients_in_reduced_precision(device, p, dtype):
    a, b, w = make(3, [(16, 9, 7), (32, 5, 5)], dtype, device, ties=p == 1)
    a = [t.to(memory_format=torch.channels_last) for t in a]
    b = [t.to(memory_format=torch.channels_last) for t in b]
    grads = check_against_reference(a, b, w, p, dtype)
    for g, t in zip(grads, a + b):
        assert g.is_contiguous(memory_format=torch.channels_last)
        assert g.stride() == t.stride()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", NORMS)
def test_more_work_items_than_threads_or_blocks(device, p):
    """4,000 one-chunk items (an H200 runs about 1,056 blocks) and samples of several chunks (CPU: 2^15)."""
    a, b, w = make(2000, [(2, 2, 2), (1, 3, 3)], torch.float32, device, ties=p == 1)
    check_against_reference(a, b, w, p, torch.float32)
    a, b, w = make(3, [(3, 1 << 15, 1), (1, 1, (1 << 15) + 7)], torch.float32, device, ties=p == 1)
    check_against_reference(a, b, w, p, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize("p", NORMS)
def test_backward_under_cuda_graph_capture(p):
    shapes = [(64, 32, 32), (128, 16, 16), (3, 5, 7)]
    a, b, w = make(4, shapes, torch.float32, "cuda")
    static_a = [t.clone().requires_grad_() for t in a]
    static_g = torch.rand(4, 3, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as torch.cuda.graph requires
        for _ in range(2):
            torch.autograd.grad(op(static_a, b, w, p), static_a, static_g)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = op(static_a, b, w, p)
        static_grads = torch.autograd.grad(static_out, static_a, static_g)
    for seed in (1, 2):
        fresh, _, _ = make(4, shapes, torch.float32, "cuda", seed=seed)
        with torch.no_grad():
            for s, f in zip(static_a, fresh):
                s.copy_(f)
        graph.replay()
        fresh = [t.requires_grad_() for t in fresh]
        expected = torch.autograd.grad(op(fresh, b, w, p), fresh, static_g)
        assert_equal(static_out, op(fresh, b, w, p))
        for got, exp in zip(static_grads, expected):
            assert_equal(got, exp)


@pytest.mark.cuda
@pytest.mark.parametrize("p", NORMS)
def test_a_second_device(p):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    a, b, w = make(3, [(8, 6, 5), (4, 7, 7)], torch.float32, "cpu")
    with torch.cuda.device(0):  # the current device is not the tensors' device
        grads = check_against_reference([t.to("cuda:1") for t in a], [t.to("cuda:1") for t in b], w, p,
                                        torch.float32)
    assert all(g.device == torch.device("cuda:1") for g in grads)


@pytest.mark.cuda
@pytest.mark.parametrize("p", NORMS)
def test_offsets_past_2_to_the_31_elements(p):
    """Three samples of 2^30 bfloat16 elements: the third starts at element 2^31 (int32 offsets would wrap)."""
    per_sample = 1 << 30
    try:
        a = torch.ones(3, per_sample, dtype=torch.bfloat16, device="cuda")
        b = torch.zeros(3, per_sample, dtype=torch.bfloat16, device="cuda")
        a[2] = 2.0
        a[1, -1] = 5.0  # one element off: 1 + 24 / 2^30 in fp32
        out = op([a], [b], [1.0], p)
        ga, _ = op_backward(torch.ones(3, 1, device="cuda"), [a], [b], [1.0], True, False, p)
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory for 2^31-element offsets")
    expected = torch.tensor([[1.0], [1.0 + (5.0 ** p - 1.0) / per_sample], [2.0 ** p]], device="cuda")
    assert_close(out, expected, rtol=1e-6, atol=0)
    s = p / per_sample  # p * w / (C H W) * g
    grad = ga[0]
    for sample, value in ((0, 1.0), (2, 2.0 if p == 2 else 1.0)):
        for index in (0, per_sample // 2, per_sample - 1):
            assert grad[sample, index].float().item() == pytest.approx(s * value, rel=1e-2)
    assert grad[1, -1].float().item() == pytest.approx(s * (5.0 if p == 2 else 1.0), rel=1e-2)
