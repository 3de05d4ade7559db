#!/usr/bin/env python
"""Eager vs torch.compile: the loss alone and a small model whose forward calls it, forward + backward.

    python benchmarks/compile.py [--repeats 10] [--n 16] [--size 64] [--layers dfc123] [--dtypes fp32,auto]
    python benchmarks/compile.py --threads 1 --clock cpu   # on a machine shared with other jobs (see below)
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/compile.py   # as an AVX2-only CPU

Per dtype option (``fp32``: the default float32 network; ``auto``: ``dtype="auto"``, bfloat16 where the
hardware computes it natively):

- ``loss``: ``FeatureLoss("vgg19", layers, weights=None)`` (a random trunk: the cost does not depend on the
  values), ``torch.autograd.grad(loss(x, y), x)`` with ``x`` requiring grad;
- ``model``: a 3x3 convolution (3 -> 3 channels, float32, trainable) whose output goes into the loss, the
  gradient of the loss with respect to the convolution's weight and bias (a training step without the
  optimiser), the whole module compiled.

Each is timed eagerly and as ``torch.compile(..., fullgraph=True)`` (inductor, built and run once before the
timing), all contenders interleaved in one process (bench_lib.interleaved_medians: a new seeded order per round,
medians). To compare with another version of perceptloss, run this script with that version on the path
(``PYTHONPATH=<its checkout>``): each run's ratios are measured within that run.

The table gives each contender's median and its speed relative to the eager loss of the same dtype
(``eager / this``: above 1 is faster than eager), plus dynamo's graph and recompile counts (1 graph per compiled
contender, 0 recompiles expected). Prints markdown and writes it to ``--output`` or
``benchmarks/results/cpu-<date>-<kind>-compile.md``, headed by the machine description.

On a machine shared with other jobs, ``--threads 1``: with more threads than free cores, every parallel region
waits for all its threads to be scheduled, so the times count parallel regions (a 1 MiB weight copy took 20 ms
on 2 cores shared by 6 jobs) rather than work, and eager (more, smaller operations) and compiled code (fewer,
fused kernels) are not compared fairly. ``--clock cpu`` then times each call by the process's CPU time, which
other jobs do not inflate (``time.process_time``; with one thread it is the work itself).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

# inductor's on-disk cache does not key its kernels on ATEN_CPU_CAPABILITY (an AVX-512 kernel loaded under the
# AVX2 emulation fails or computes wrong values): one cache per emulated level, set before torch reads it
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "torchinductor-" + "-".join(
    os.environ.get(v, "native").lower() for v in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"))))

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_lib as bl  # noqa: E402

DTYPE_OPTIONS = {"fp32": None, "auto": "auto"}


class LossModel(torch.nn.Module):
    """A 3x3 convolution whose output is compared with the target by ``loss``: the smallest training step."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.head = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.loss = loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(torch.sigmoid(self.head(x)), y)


def build_loss(layers: str, dtype: str | None) -> torch.nn.Module:
    from perceptloss import FeatureLoss

    torch.manual_seed(0)
    return FeatureLoss("vgg19", layers, weights=None, dtype=dtype)


def contenders(layers: str, dtypes: list[str], x: torch.Tensor, y: torch.Tensor
               ) -> dict[tuple[str, str], Callable[[], object]]:
    """(dtype option, contender) -> one forward+backward call."""
    out: dict[tuple[str, str], Callable[[], object]] = {}
    for name in dtypes:
        dtype = DTYPE_OPTIONS[name]
        loss = build_loss(layers, dtype)
        model = LossModel(build_loss(layers, dtype))
        params = list(model.head.parameters())
        compiled_loss = torch.compile(loss, fullgraph=True)
        compiled_model = torch.compile(model, fullgraph=True)
        out[(name, "loss eager")] = lambda f=loss: torch.autograd.grad(f(x, y), x)
        out[(name, "loss compiled")] = lambda f=compiled_loss: torch.autograd.grad(f(x, y), x)
        out[(name, "model eager")] = lambda f=model, p=params: torch.autograd.grad(f(x, y), p)
        out[(name, "model compiled")] = lambda f=compiled_model, p=params: torch.autograd.grad(f(x, y), p)
    return out


def measure(args: argparse.Namespace) -> str:
    from torch._dynamo.utils import counters

    bl.allow_recompiles(bl.RECOMPILE_LIMIT)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.n, 3, args.size, args.size, generator=g).requires_grad_()
    y = torch.rand(args.n, 3, args.size, args.size, generator=g)
    graphs_before = counters["stats"]["unique_graphs"]
    fns = contenders(args.layers, args.dtypes, x, y)
    build = {}
    for key, fn in fns.items():  # compiles the compiled ones
        start = time.perf_counter()
        fn()
        build[key] = time.perf_counter() - start
        print(f"first call {key}: {build[key]:.1f} s", flush=True)
    graphs = counters["stats"]["unique_graphs"] - graphs_before
    graphs_built = counters["stats"]["unique_graphs"]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times = bl.interleaved_medians(fns, "cpu", warmup=2, repeats=args.repeats, clock=clock)
    recompiles = counters["stats"]["unique_graphs"] - graphs_built  # a recompilation builds a graph
    # the compute fraction: the eager call's FLOPs (the compiled one does the same convolutions) at the time
    # measured, against this run's matrix rate in the dtype the network runs in
    flops = {key: bl.count_flops(fns[(key[0], key[1].replace("compiled", "eager"))]) for key in fns}
    from perceptloss import auto_dtype

    rates = {name: bl.matrix_rate(auto_dtype("cpu") if name == "auto" else torch.float32) for name in args.dtypes}
    rows = []
    for (name, what), t in times.items():
        base = times[(name, "loss eager")] if "loss" in what else times[(name, "model eager")]
        achieved = flops[(name, what)] / t
        rows.append([name, what, f"{t * 1e3:.1f}", f"{base / t:.2f}x", f"{achieved / 1e9:.0f}",
                     f"{100 * achieved / rates[name]:.0f}%", f"{build[(name, what)]:.0f}"])
    compiled = sum("compiled" in what for _, what in fns)
    what_ms = "CPU ms" if args.clock == "cpu" else "ms"
    lines = [f"| dtype | contender | {what_ms} (fwd+bwd, median) | eager / this | GFLOP/s | of the matrix rate | "
             "first call s |", "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in sorted(rows)]
    lines += ["", f"dynamo: {graphs} graphs for {compiled} compiled contenders, {recompiles} graphs built while timing (recompilations).",
              f"N={args.n}, {args.size}x{args.size}, FeatureLoss('vgg19', {args.layers!r}, weights=None) (random trunk), "
              f"{args.repeats} interleaved rounds after 2 warm-up rounds; {torch.get_num_threads()} threads; "
              f"{'CPU time of the process' if args.clock == 'cpu' else 'wall time'} per call; the model's ratio is "
              "against the eager model.",
              "Matrix rate of this run (a 2048³ matmul): " + ", ".join(
                  f"{name} {rates[name] / 1e9:.0f} GFLOP/s" for name in args.dtypes) +
              f"; FLOPs per call (torch's counter: convolutions and matmuls, forward and input gradient): " +
              ", ".join(f"{n} {w} {flops[(n, w)] / 1e9:.2f} G" for n, w in sorted(flops) if "eager" in w) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--layers", default="dfc123")
    parser.add_argument("--dtypes", default="fp32,auto", help="comma-separated: " + ", ".join(DTYPE_OPTIONS))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads before building anything (inductor's kernels keep the count "
                             "they were compiled with); default: torch's")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or the process's CPU time (with --threads 1 on a shared machine)")
    parser.add_argument("--output", default=None, help="the result file (default benchmarks/results/cpu-<date>-<kind>-compile.md)")
    bl.add_memory_option(parser)
    args = parser.parse_args(argv)
    memory = bl.apply_memory_option(args)
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in args.dtypes if d not in DTYPE_OPTIONS]
    if unknown:
        raise SystemExit(f"--dtypes: unknown {', '.join(unknown)}; choose among {', '.join(DTYPE_OPTIONS)}")
    os.environ.setdefault("PERCEPTLOSS_OFFLINE", "1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    head = bl.result_head("Eager vs torch.compile", "cpu", "compile.py", argv)
    print("\n".join(head), flush=True)
    body = measure(args)
    print(body, flush=True)
    path = bl.result_file(args.output, "compile" + memory)
    bl.write_result("\n".join(head) + "\n" + body + "\n", path)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
