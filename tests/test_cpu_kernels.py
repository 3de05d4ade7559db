"""The CPU kernels at every built instruction level, the level choice, and the backward's gradients when they
are held, retained or accumulated."""
import os
import subprocess
import sys

import pytest
import torch

import perceptloss
from perceptloss.backends.cpu import forced_kernel_level, kernel_level, kernel_levels
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


# ------------------------------------------------------------------------------------ held gradients

BIG = [(64, 64, 64), (128, 32, 32)]  # 1 MiB and more per layer in fp32 at N=2


def big_features(seed=0):
    a, b, w = make(2, BIG, torch.float32, "cpu", seed=seed)
    return [t.requires_grad_() for t in a], b, w


def expected_grads(a, b, w):
    a64 = [t.detach().double().requires_grad_() for t in a]
    ref = feature_distance_reference(a64, [t.double() for t in b], w)
    return torch.autograd.grad(ref.sum(), a64)


def test_held_gradients_are_never_overwritten():
    """Retained graph, double forward and a hook that keeps the gradient: the next backward gets new memory."""
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
    a, b, w = big_features()
    for _ in range(3):
        op(a, b, w).sum().backward()
    for t, exp in zip(a, expected_grads(a, b, w)):
        torch.testing.assert_close(t.grad.double(), 3 * exp)


def test_info_command_names_the_level_in_use(capsys):
    from perceptloss.__main__ import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"CPU kernel level: {kernel_level()}" in out and "fused operator: kernels for cpu" in out
