"""Peak memory and time of a perceptual loss evaluated whole, tiled (``perceptloss.tiled``) and checkpointed.

Every cell (loss x contender x mode x size) runs in a fresh child process, so that its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that cell alone; the table gives the peak and its
growth over the process just before the first call (the loss built, the two images allocated). Trunks are
random (``weights=None``, seeded alike in every child, so tiled and whole values are comparable): the cost is
the architecture's. Modes: "eval" (forward under ``torch.no_grad``) and "train" (forward + backward to the
input). Contenders: whole, tiled (``tiled(loss, tile=--tile)``), checkpointed (``checkpoint=True`` where the
loss accepts it, else "n/a"), and the peers beside the matching loss: the ``lpips`` package's LPIPS(vgg) and
piq's LPIPS and ContentLoss(vgg19, relu1_1..relu5_1) (see ``benchmarks/peers.py`` for how they are built offline).

    python benchmarks/memory.py --sizes 256 512            # writes benchmarks/results/cpu-<date>-memory.md
    python benchmarks/memory.py --sizes 1024 2048 --tile 384
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

LOSSES = {
    "FeatureLoss(vgg19, style)": "feature",
    "LPIPS(vgg)": "lpips",
    "DISTS": "dists",
}
PEERS = {
    "feature": ["piq ContentLoss(vgg19, relu1_1..relu5_1)"],
    "lpips": ["lpips LPIPS(vgg)", "piq LPIPS"],
    "dists": [],
}


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _build(loss: str, contender: str):
    """The callable (x, y) -> scalar of one cell, or None when the contender does not apply."""
    import torch

    import perceptloss
    from perceptloss import DISTS, LPIPS, FeatureLoss

    torch.manual_seed(0)
    if contender.startswith(("lpips ", "piq ")):
        import peers

        build = {"lpips LPIPS(vgg)": peers.build_lpips, "piq LPIPS": peers.build_piq_lpips,
                 "piq ContentLoss(vgg19, relu1_1..relu5_1)": peers.build_piq_content}[contender]
        return build("cpu")
    cls, args, kw = {
        "feature": (FeatureLoss, ("vgg19", "style"), {"weights": None}),
        "lpips": (LPIPS, ("vgg",), {"weights": None, "reduction": "mean"}),
        "dists": (DISTS, (), {"weights": None, "reduction": "mean"}),
    }[loss]
    if contender == "checkpointed":
        if "checkpoint" not in inspect.signature(cls.__init__).parameters:
            return None
        kw = {**kw, "checkpoint": True}
    module = cls(*args, **kw)
    if contender.startswith("tiled"):
        return perceptloss.tiled(module, tile=int(contender.split("=")[1]))
    return module


def run_cell(loss: str, contender: str, mode: str, size: int, repeats: int) -> dict:
    """Child process: build, time ``repeats`` calls (after one warm-up), report peak RSS and the value."""
    import torch

    fn = _build(loss, contender)
    if fn is None:
        return {"status": "n/a"}
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, size, size, generator=g)
    y = (x + 0.1 * torch.rand(1, 3, size, size, generator=g)).clamp(0, 1)
    base = _rss_mib()

    def call() -> float:
        if mode == "eval":
            with torch.no_grad():
                return float(fn(x, y))
        xg = x.clone().requires_grad_()
        value = fn(xg, y)
        value.backward()
        return float(value.detach())

    value = call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"status": "ok", "time_s": statistics.median(times), "peak_mib": peak, "base_mib": base, "value": value}


def _child(loss: str, contender: str, mode: str, size: int, repeats: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--cell", loss, contender, mode, str(size), "--repeats", str(repeats)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "PERCEPTLOSS_OFFLINE": "1"})
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1][:120]
        return {"status": f"failed (rc {out.returncode}): {tail}"}
    return json.loads(lines[-1])


def write_table(out: Path, rows: list, args: argparse.Namespace, date: str) -> None:
    """The markdown table of the cells measured so far (rewritten after every cell)."""
    from bench_lib import describe_machine

    lines = [
        f"# perceptloss memory benchmark (cpu, {date})",
        "",
        describe_machine("cpu"),
        "",
        f"Reproduce: `python benchmarks/memory.py --sizes {' '.join(map(str, args.sizes))} --tile {args.tile}`",
        "",
        "One 1x3xSxS image pair per call, random trunks; eval = forward under no_grad, train = forward + backward "
        "to the input. Peak = the child process's peak RSS; growth = peak minus the RSS just before the first call "
        f"(loss built, images allocated). Time: median of {args.repeats} call(s) after one warm-up. "
        "Tiled vs whole: relative difference of the values (float32).",
        "",
        "| loss | mode | size | contender | time (s) | peak RSS (MiB) | growth (MiB) | tiled vs whole |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, mode, size, contender, r, diff in rows:
        if r["status"] == "ok":
            cells = f"{r['time_s']:.2f} | {r['peak_mib']:.0f} | {r['peak_mib'] - r['base_mib']:.0f}"
        else:
            cells = f"{r['status']} | | "
        lines.append(f"| {name} | {mode} | {size}² | {contender} | {cells} | {diff} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--tile", type=int, default=384, help="tile side for the tiled contender (default 384)")
    p.add_argument("--modes", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    p.add_argument("--losses", nargs="+", default=list(LOSSES.values()), choices=list(LOSSES.values()))
    p.add_argument("--repeats", type=int, default=1, help="timed calls per cell after one warm-up (median)")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per cell")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--cell", nargs=4, metavar=("LOSS", "CONTENDER", "MODE", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cell:
        loss, contender, mode, size = args.cell
        print(json.dumps(run_cell(loss, contender, mode, int(size), args.repeats)))
        return

    date = datetime.date.today().isoformat()
    out = args.out or HERE / "results" / f"cpu-{date}-memory.md"
    rows = []
    for name, loss in LOSSES.items():
        if loss not in args.losses:
            continue
        contenders = ["whole", f"tiled tile={args.tile}", "checkpointed"] + ([] if args.no_peers else PEERS[loss])
        for mode in args.modes:
            for size in args.sizes:
                whole_value = None
                for contender in contenders:
                    r = _child(loss, contender, mode, size, args.repeats, args.timeout)
                    if contender == "whole" and r.get("status") == "ok":
                        whole_value = r["value"]
                    diff = ""
                    if contender.startswith("tiled") and r.get("status") == "ok" and whole_value:
                        diff = f"{abs(r['value'] - whole_value) / abs(whole_value):.1e}"
                    if contender.startswith("tiled") and size <= args.tile:
                        diff = (diff + " (one tile: whole)").strip()
                    rows.append((name, mode, size, contender, r, diff))
                    status = r["status"] if r["status"] != "ok" else f"{r['time_s']:.2f} s, peak {r['peak_mib']:.0f} MiB"
                    print(f"{name:28s} {mode:5s} {size:5d} {contender:42s} {status}", flush=True)
                    write_table(out, rows, args, date)
    write_table(out, rows, args, date)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
