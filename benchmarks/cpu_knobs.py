"""Do the fused operator's CPU kernel levels pay on the whole loss? Interleaved fwd+bwd timings of FeatureLoss.

    python benchmarks/cpu_knobs.py [--reps 15] [--out benchmarks/results/cpu_knobs.md]

The knob (``perceptloss.backends.cpu``): the per-ISA kernel levels (``forced_kernel_level("DEFAULT")``: the
kernels compiled without AVX2 / AVX-512), switched off against the default on ``FeatureLoss("vgg19", LAYERS)``
forward+backward (random trunk), for the cases below; the configurations run interleaved (one call of each in
turn, in a fresh random order per round), and the table gives each one's median time relative to the default in
the same run. Run it natively and under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` with nothing else on
the machine.

The tables in ``benchmarks/results/cpu_knobs_native.md`` and ``cpu_knobs_avx2.md`` were measured before the
gradient-memory cache and the non-temporal "streaming" stores were deleted (2026-12-06): their "no grad cache",
"no streaming" and "streaming as 8 MiB L3" columns are configurations this script no longer has.
"""
from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import time
from pathlib import Path

import torch

import perceptloss
from perceptloss.backends import cpu as backend

from bench_lib import describe_machine, print_and_write

#: (name, N, side, layers, dtype option)
CASES = [
    ("dfc123 N16 64px fp32", 16, 64, "dfc123", None),
    ("dfc345 N16 64px fp32", 16, 64, "dfc345", None),
    ("dfc123 N4 256px fp32", 4, 256, "dfc123", None),
    ("dfc123 N16 64px auto", 16, 64, "dfc123", "auto"),
]


def configurations() -> dict[str, contextlib.AbstractContextManager | None]:
    """Name -> a context that switches one knob off (None: the default)."""
    levels = backend.kernel_levels()
    out = {"default": None}
    if len(levels) > 1:
        out[f"kernels {levels[0]}"] = lambda: backend.forced_kernel_level(levels[0])
    return out


def step(loss, x, y) -> float:
    x.grad = None
    start = time.perf_counter()
    loss(x, y).backward()
    return time.perf_counter() - start


def measure(case, reps: int) -> dict[str, float]:
    name, n, side, layers, dtype = case
    torch.manual_seed(0)
    loss = perceptloss.FeatureLoss("vgg19", layers, weights=None, dtype=dtype)
    x, y = torch.rand(n, 3, side, side, requires_grad=True), torch.rand(n, 3, side, side)
    configs = configurations()
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(3):
        step(loss, x, y)
    for _ in range(reps):
        order = list(configs)
        random.shuffle(order)
        for key in order:
            ctx = configs[key]
            with (ctx() if ctx is not None else contextlib.nullcontext()):
                step(loss, x, y)  # one warm call per switch (caches refill)
                times[key].append(step(loss, x, y))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    random.seed(0)
    lines = [describe_machine("cpu"), "", "| case | default (ms) | " + " | ".join(k for k in configurations() if k != "default")
             + " |", "| --- " * (len(configurations()) + 1) + "|"]
    for case in CASES:
        med = measure(case, args.reps)
        base = med["default"]
        cells = [f"{med[k] / base:.3f}" for k in med if k != "default"]
        lines.append(f"| {case[0]} | {1000 * base:.1f} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n\nCells: median time with that knob off / the default's (above 1: the knob helps).\n"
    print_and_write(text, args.out)


if __name__ == "__main__":
    main()
