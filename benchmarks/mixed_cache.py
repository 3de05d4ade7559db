"""The fused operator's CPU forward+backward in ONE process that alternates float32/bfloat16 and two shapes.

The gradient-buffer cache of the CPU backward must stay effective when gradients of several dtypes and shapes
pass through one process (issue 17 item 4). This times, round-robin in one rotation (interleaved medians), the
fused operator's forward+backward and ``torch.compile`` of the per-sample eager distance (one compiled function
for every case, ``bench_lib.compiled_eager``) on VGG19 relu1_1..relu5_1 feature shapes, N=64 at 64x64 and N=16 at
256x256, float32 and bfloat16, gradients for the inputs only (as a loss's backward).

    python benchmarks/mixed_cache.py [--repeats 10] [--output FILE.md]

Run it twice, e.g. with a build of the previous cache and with the new one (PYTHONPATH to the other build), or
with PERCEPTLOSS_CPU_GRAD_CACHE=0 to see what fresh (page-faulting) gradient memory costs.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lib  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def fwd_bwd(fn, a, b, w):
    def run():
        out = fn(a, b, w)
        torch.autograd.grad(out.sum(), a)  # the gradients are freed on return: their memory may be reused
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cases", default=",".join(bench_lib.DEFAULT_CASES))
    parser.add_argument("--output", help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    cells = {}
    for case in args.cases.split(","):
        for tag, dtype in DTYPES.items():
            a, b, w = bench_lib.make_features(case, dtype, "cpu", requires_grad=True)
            cells[(case, tag, "fused")] = fwd_bwd(bench_lib.fused, a, b, w)
            cells[(case, tag, "compile")] = fwd_bwd(bench_lib.compiled_eager, a, b, w)
    times = bench_lib.interleaved_medians(cells, "cpu", warmup=args.warmup, repeats=args.repeats)
    lines = [f"- {k}: {v}" for k, v in bench_lib.machine_info("cpu").items()]
    lines.append(f"- PERCEPTLOSS_CPU_GRAD_CACHE: {os.environ.get('PERCEPTLOSS_CPU_GRAD_CACHE', 'not set (on)')}")
    lines.append(f"- one process, {len(cells)} cells in one rotation (a new seeded random order each), median of {args.repeats} (warm-up {args.warmup})")
    lines += ["", "| case | dtype | fused fwd+bwd ms | compile fwd+bwd ms | fused vs compile |", "| --- | --- | --- | --- | --- |"]
    for case, tag, kind in cells:
        if kind != "fused":
            continue
        f, c = times[(case, tag, "fused")], times[(case, tag, "compile")]
        lines.append(f"| {case} | {tag} | {1e3 * f:.1f} | {1e3 * c:.1f} | {c / f:.2f}x |")
    lines.append(f"\ncache held at the end: {bench_lib.perceptloss.backends.cpu.cache_bytes() / 2**20:.0f} MiB, "
                 f"peak RSS {bench_lib.proc_status_mib('VmHWM'):.0f} MiB")
    text = "\n".join(lines)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
