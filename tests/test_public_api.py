"""The public API is small: ``perceptloss.__all__`` names what a user needs at the top level; everything else is
imported from its module; the fused operator's CPU settings live in ``perceptloss.backends.cpu``."""
import subprocess
import sys
import types

import pytest

import perceptloss


def test_all_is_small_and_every_name_exists():
    assert len(perceptloss.__all__) <= 27
    assert len(set(perceptloss.__all__)) == len(perceptloss.__all__)
    assert [n for n in perceptloss.__all__ if not hasattr(perceptloss, n)] == []


def test_nothing_public_at_the_top_level_outside_all_but_modules():
    """No name leaks to the top level by being imported there: what is not in __all__ is a submodule."""
    extra = [n for n in dir(perceptloss) if not n.startswith("_") and n not in perceptloss.__all__]
    assert [n for n in extra if not isinstance(getattr(perceptloss, n), types.ModuleType)] == []


def test_star_import_gives_exactly_all():
    namespace: dict = {}
    exec("from perceptloss import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(perceptloss.__all__)


@pytest.mark.parametrize("name", [
    "cpu_kernel_level", "cpu_kernel_levels", "has_kernel",
])
def test_operator_tuning_is_not_top_level(name):
    assert not hasattr(perceptloss, name)


def test_backends_namespace():
    """As ``torch.backends.cpu``: one namespace for the operator's CPU side, reached after ``import perceptloss``."""
    from perceptloss.backends import cpu

    assert perceptloss.backends.cpu is cpu
    assert callable(perceptloss.backends.has_kernel)
    assert perceptloss.backends.has_kernel("cpu") in (True, False)
    for name in cpu.__all__:
        assert callable(getattr(cpu, name)), name
    if not perceptloss.backends.has_kernel("cpu"):
        with pytest.raises(RuntimeError, match="pip install"):
            cpu.kernel_level()
        return
    assert cpu.kernel_level() in cpu.kernel_levels()


@pytest.mark.parametrize("module, name", [
    ("perceptloss.registry", "PRESETS"), ("perceptloss.registry", "register_backbone"),
    ("perceptloss.registry", "get_backbone"), ("perceptloss.weights", "get_weights"),
    ("perceptloss.weights", "list_weight_entries"), ("perceptloss.channels", "ChannelPolicy"),
    ("perceptloss.preprocessing", "IMAGENET"), ("perceptloss.hardware", "bf16_native"),
    ("perceptloss.functional", "feature_distance_reference"),
])
def test_what_left_the_top_level_is_in_its_module(module, name):
    mod = __import__(module, fromlist=[name])
    assert hasattr(mod, name) and not hasattr(perceptloss, name)


@pytest.mark.slow
def test_info_prints_the_cpu_settings():
    """``python -m perceptloss info`` still reports the kernel level."""
    out = subprocess.run([sys.executable, "-m", "perceptloss", "info"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    if perceptloss.backends.has_kernel("cpu"):
        level = perceptloss.backends.cpu.kernel_level()
        assert f"CPU kernel level: {level}" in out.stdout


_FAULTS = """
import resource, sys, torch
import perceptloss
if sys.argv[1] == "retain":
    assert perceptloss.backends.cpu.retain_freed_memory()
else:  # glibc's initial setting, fixed (its thresholds otherwise move with the heap's history)
    import ctypes
    assert ctypes.CDLL(None).mallopt(-3, 128 << 10) == 1  # M_MMAP_THRESHOLD: 128 KiB
def step():  # a step's activations: three 16 MiB blocks alive together, then freed
    blocks = [torch.ones(4 << 20) for _ in range(3)]
    del blocks
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_retain_freed_memory_stops_remapping_freed_blocks():
    """After retain_freed_memory(), the steps of a loop reuse the memory the last step freed: page faults per step
    (counted by the kernel) fall from thousands (with glibc's initial 128 KiB threshold, held fixed, the three
    freed 16 MiB blocks go back to the system and are mapped again, 4 KiB at a time, at the next step; its dynamic
    threshold does that or not depending on the heap's history) to nearly none. The allocation pattern alone, so
    the count does not depend on which convolution code the CPU runs."""
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return float(out.stdout.split()[-1])

    assert faults("retain") < 100 < 1000 < faults("default")
