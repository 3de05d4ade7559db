"""The CPU kernels at every built instruction level, the level choice, the streaming policy and the backward's
gradient-memory cache."""
import os
import subprocess
import sys

import pytest
import torch

import perceptloss
from perceptloss.backends.cpu import (cache_bytes, forced_kernel_level, forced_streaming_threshold, kernel_level,
                                      kernel_levels, last_level_cache_bytes, streaming_threshold_bytes)
from perceptloss.functional import feature_distance_reference

from .test_fused_op import SHAPES, TOL, make
from .helpers import assert_close

pytestmark = pytest.mark.skipif(not perceptloss.backends.has_kernel("cpu"), reason="fused CPU operator not built")
op = torch.ops.perceptloss.feature_distance if perceptloss.HAS_EXT else None
LEVELS = kernel_levels() if perceptloss.backends.has_kernel("cpu") else []
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def test_levels_are_built_for_this_cpu():
    assert LEVELS[0] == "DEFAULT"
    assert kernel_level() == LEVELS[-1]  # the highest runnable level is the default choice
    if os.uname().machine == "x86_64" and torch.backends.cpu.get_cpu_capability() == "AVX512":
        assert LEVELS == ["DEFAULT", "AVX2", "AVX512"]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p", [1, 2])
def test_every_level_matches_the_reference(level, dtype, p):
    # Sizes with vector tails, 1x1 maps, several work chunks per sample, channels_last.
    for n, shapes in SHAPES[:4] + [(2, [(16, 64, 65)])]:
        a, b, w = make(n, shapes, dtype, "cpu", requires_grad=True)
        if len(shapes) > 1:
            a = [a[0].detach().to(memory_format=torch.channels_last).requires_grad_()] + a[1:]
            b = [b[0].detach().to(memory_format=torch.channels_last).requires_grad_()] + b[1:]
        with forced_kernel_level(level):
            assert kernel_level() == level
            out = op(a, b, w, p)
            g = torch.rand(out.shape, dtype=out.dtype)
            grads = torch.autograd.grad(out, a + b, g)
        a64 = [t.detach().double().requires_grad_() for t in a]
        b64 = [t.detach().double().requires_grad_() for t in b]
        ref = feature_distance_reference(a64, b64, w, p)
        ref_grads = torch.autograd.grad(ref, a64 + b64, g.double())
        torch.testing.assert_close(out.double(), ref.detach(), **TOL[dtype])
        for got, exp, src in zip(grads, ref_grads, a + b):
            assert got.dtype == dtype and got.stride() == src.stride()
            torch.testing.assert_close(got.double(), exp, **TOL[dtype])


def test_levels_agree_closely_in_fp32():
    a, b, w = make(3, [(64, 32, 32), (128, 16, 15)], torch.float32, "cpu")
    outs = []
    for level in LEVELS:
        with forced_kernel_level(level):
            outs.append(op(a, b, w))
    for o in outs[1:]:
        assert_close(o, outs[0], rtol=1e-6, atol=0)


def test_unknown_level_is_refused_with_the_choices():
    with pytest.raises(RuntimeError, match="not available here; built and runnable: DEFAULT"):
        with forced_kernel_level("SSE9"):
            pass
    assert kernel_level() == LEVELS[-1]


@pytest.mark.parametrize("env, expected", [("default", "DEFAULT"), pytest.param("avx2", "AVX2", marks=pytest.mark.slow)])
def test_aten_cpu_capability_lowers_the_level(env, expected):
    if expected not in LEVELS:
        pytest.skip(f"{expected} kernels are not runnable here")
    code = "import torch, perceptloss; print(perceptloss.backends.cpu.kernel_level())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ATEN_CPU_CAPABILITY": env},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == expected


# ------------------------------------------------------------------------------------ streaming


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p", [1, 2])
def test_streaming_changes_no_result(level, dtype, p):
    # Non-temporal gradient stores: results and gradients are bit-identical with streaming always on
    # (threshold 0) and off (-1), with vector tails, many work items and channels_last.
    a, b, w = make(3, [(64, 33, 31), (16, 64, 65), (512, 2, 2)], dtype, "cpu")
    a[0] = a[0].to(memory_format=torch.channels_last)
    b[0] = b[0].to(memory_format=torch.channels_last)
    a = [t.requires_grad_() for t in a]
    runs = []
    with forced_kernel_level(level):
        for threshold in (0, -1):
            with forced_streaming_threshold(threshold):
                out = op(a, b, w, p)
                runs.append((out, *torch.autograd.grad(out, a, torch.ones_like(out))))
    for on, off in zip(*runs):
        assert torch.equal(on, off)


def test_streaming_threshold_is_twice_the_last_level_cache():
    llc = last_level_cache_bytes()
    if os.path.exists("/sys/devices/system/cpu/cpu0/cache/index0/size"):
        assert llc > 0
    assert streaming_threshold_bytes() == (2 * llc if llc else -1)
    with forced_streaming_threshold(123):
        assert streaming_threshold_bytes() == 123
    assert streaming_threshold_bytes() == (2 * llc if llc else -1)


@pytest.mark.parametrize("bad", [-2, 1.5, True])
def test_streaming_threshold_refuses_what_is_not_a_byte_count(bad):
    with pytest.raises(ValueError, match="-1 for never"):
        with forced_streaming_threshold(bad):
            pass


@pytest.mark.parametrize("value", ["0", pytest.param("false", marks=pytest.mark.slow)])
def test_streaming_can_be_turned_off_by_the_environment(value):
    code = "import perceptloss.backends.cpu as k; print(k.streaming_threshold_bytes())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PERCEPTLOSS_CPU_STREAMING": value},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "-1"


# ------------------------------------------------------------------------------------ gradient-memory cache

BIG = [(64, 64, 64), (128, 32, 32)]  # 1 MiB and more per layer in fp32 at N=2: served by the cache


def big_features(seed=0):
    a, b, w = make(2, BIG, torch.float32, "cpu", seed=seed)
    return [t.requires_grad_() for t in a], b, w


def expected_grads(a, b, w):
    a64 = [t.detach().double().requires_grad_() for t in a]
    ref = feature_distance_reference(a64, [t.double() for t in b], w)
    return torch.autograd.grad(ref.sum(), a64)


def test_freed_gradient_memory_is_reused_and_bounded():
    perceptloss.backends.cpu.empty_cache()
    a, b, w = big_features()
    grads = torch.autograd.grad(op(a, b, w).sum(), a)
    ptrs = {t.data_ptr() for t in grads}
    nbytes = sum(t.numel() * t.element_size() for t in grads)
    del grads  # freed: back to the cache
    assert cache_bytes() >= nbytes
    again = torch.autograd.grad(op(a, b, w).sum(), a)
    assert {t.data_ptr() for t in again} == ptrs
    for got, exp in zip(again, expected_grads(a, b, w)):
        torch.testing.assert_close(got.double(), exp)
    del again
    for _ in range(5):  # steady state: the cache never holds more than one backward's worth
        torch.autograd.grad(op(a, b, w).sum(), a)
        assert cache_bytes() <= 2 * nbytes
    assert perceptloss.backends.cpu.empty_cache() > 0
    assert cache_bytes() == 0


def test_held_gradients_are_never_overwritten():
    """Retained graph, double forward and a hook that keeps the gradient: the next backward gets new memory."""
    perceptloss.backends.cpu.empty_cache()
    a, b, w = big_features()
    kept = []
    h = a[0].register_hook(lambda g: kept.append(g))
    out1 = op(a, b, w)
    out2 = op(a, [t * 0.5 for t in b], w)  # second forward over the same inputs
    g1 = torch.autograd.grad(out1.sum(), a, retain_graph=True)
    snap1 = [t.clone() for t in g1]
    g1b = torch.autograd.grad(out1.sum(), a, retain_graph=True)  # the retained graph again
    g2 = torch.autograd.grad(out2.sum(), a)
    h.remove()
    for held, snap in zip(g1, snap1):
        assert torch.equal(held, snap)
    live = [t.data_ptr() for t in list(g1) + list(g1b) + list(g2)]
    assert len(set(live)) == len(live)  # no two live gradients share memory
    assert [t.data_ptr() for t in kept] == [g1[0].data_ptr(), g1b[0].data_ptr(), g2[0].data_ptr()]
    for got, exp in zip(g1b, expected_grads(a, b, w)):
        torch.testing.assert_close(got.double(), exp)
    for got, exp in zip(g2, expected_grads(a, [t * 0.5 for t in b], w)):
        torch.testing.assert_close(got.double(), exp)
    assert_close(kept[0], g1[0])


def test_accumulated_parameter_gradients_stay_correct_over_steps():
    """Leaf .grad accumulation across steps (autograd may keep the first gradient tensor as .grad)."""
    perceptloss.backends.cpu.empty_cache()
    a, b, w = big_features()
    for _ in range(3):
        op(a, b, w).sum().backward()
    for t, exp in zip(a, expected_grads(a, b, w)):
        torch.testing.assert_close(t.grad.double(), 3 * exp)


def _grad_ptrs(a, b, w):
    grads = torch.autograd.grad(op(a, b, w).sum(), a)
    return sorted(t.data_ptr() for t in grads), sum(t.numel() * t.element_size() for t in grads)


def test_reuse_survives_a_mix_of_dtypes_and_shapes():
    """fp32 and bf16 gradients of other sizes in between do not evict each other's blocks (issue 17 item 4).

    All sizes together (7.75 MiB) fit the cache's bound, twice the most bytes live at once (4 MiB).
    """
    perceptloss.backends.cpu.empty_cache()
    fp32 = make(2, [(64, 64, 64), (128, 32, 64)], torch.float32, "cpu")  # 2 MiB twice: one size, two blocks
    bf16 = make(2, [(96, 64, 64), (64, 64, 64)], torch.bfloat16, "cpu")  # 1.5 MiB and 1 MiB
    wide = make(1, [(128, 64, 40)], torch.float32, "cpu")                 # 1.25 MiB, another shape
    cases = [([t.requires_grad_() for t in a], b, w) for a, b, w in (fp32, bf16, wide)]
    first = [_grad_ptrs(*c) for c in cases]
    most_live = max(nbytes for _, nbytes in first)
    for _ in range(3):
        for c, (ptrs, _) in zip(cases, first):
            assert _grad_ptrs(*c)[0] == ptrs  # the very blocks of the previous round: no fresh memory
            assert cache_bytes() <= 2 * most_live
    for c in cases:  # still correct
        a, b, w = c
        got = torch.autograd.grad(op(a, b, w).sum(), a)
        for x, e in zip(got, expected_grads(a, b, w)):
            torch.testing.assert_close(x.double(), e, **TOL[a[0].dtype])


def test_sizes_no_longer_used_are_freed():
    """A size not requested for two epochs (2 x 256 requests) leaves the cache."""
    perceptloss.backends.cpu.empty_cache()
    old, _, _ = big_features()
    a, b, w = big_features()
    old_ptrs, _ = _grad_ptrs(a, b, w)
    small = [torch.rand(2, 1 << 17, requires_grad=True)]  # 1 MiB per gradient, another size
    target = [torch.rand(2, 1 << 17)]
    for _ in range(2 * 256 + 8):
        torch.autograd.grad(op(small, target, [1.0]).sum(), small)
    assert cache_bytes() == small[0].numel() * 4


def test_cache_off_still_correct():
    before = perceptloss.backends.cpu.set_grad_cache(False)
    perceptloss.backends.cpu.empty_cache()
    try:
        assert cache_bytes() == 0
        a, b, w = big_features()
        grads = torch.autograd.grad(op(a, b, w).sum(), a)
        del grads
        assert cache_bytes() == 0
        again = torch.autograd.grad(op(a, b, w).sum(), a)
        for got, exp in zip(again, expected_grads(a, b, w)):
            torch.testing.assert_close(got.double(), exp)
    finally:
        perceptloss.backends.cpu.set_grad_cache(before)


def test_info_command_names_the_level_in_use(capsys):
    from perceptloss.__main__ import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"CPU kernel level: {kernel_level()}" in out and "fused operator: kernels for cpu" in out
    assert "CPU streaming (non-temporal gradient stores): " in out
