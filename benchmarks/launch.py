#!/usr/bin/env python
"""The DFC-VAE training step under the CPU launch conventions of the ecosystem: memory allocators and launchers.

    python benchmarks/launch.py                      # every preset, every launch setting found on this machine
    python benchmarks/launch.py --presets pvae --rounds 3

Each launch setting runs the same synthetic training step (VAE + objective, Adam, batch 64 at 64x64, bf16
autocast + channels_last unless told otherwise) in a fresh child process: allocator settings only act at
process start. The settings are run round-robin (A B C A B C ...) for --rounds rounds and the median step
time over all rounds is reported, next to the default launch. Writes benchmarks/results/cpu-<date>-launch.md.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: glibc tunables (environment variables read by malloc at start-up). A fixed mmap threshold also stops glibc's
#: dynamic threshold and trimming, so freed blocks stay mapped and are reused without page faults.
GLIBC_KEEP = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
              "MALLOC_TOP_PAD_": str(1 << 28)}


def find_library(names: list[str]) -> str | None:
    for pattern in names:
        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib", sys.prefix + "/lib"):
            hits = sorted(glob.glob(os.path.join(d, pattern)))
            if hits:
                return hits[0]
    return None


def launch_settings() -> tuple[dict[str, dict], list[str]]:
    """label -> {"env": {...}, "launcher": [...]}; and notes on settings not available here."""
    settings = {"default (glibc malloc)": {"env": {}, "launcher": []},
                "glibc: keep freed memory (MALLOC_MMAP_THRESHOLD_/TRIM_THRESHOLD_/TOP_PAD_)": {"env": GLIBC_KEEP, "launcher": []},
                "glibc: MALLOC_ARENA_MAX=1": {"env": {"MALLOC_ARENA_MAX": "1"}, "launcher": []}}
    notes = []
    for label, names in (("jemalloc (LD_PRELOAD)", ["libjemalloc.so*"]), ("tcmalloc (LD_PRELOAD)", ["libtcmalloc_minimal.so*", "libtcmalloc.so*"])):
        lib = find_library(names)
        if lib:
            settings[f"{label} {os.path.basename(lib)}"] = {"env": {"LD_PRELOAD": lib}, "launcher": []}
        else:
            notes.append(f"{label}: not installed here (e.g. apt install libjemalloc2 libtcmalloc-minimal4)")
    settings["python -m torch.backends.xeon.run_cpu"] = {
        "env": {}, "launcher": ["-m", "torch.backends.xeon.run_cpu", "--disable-numactl", "--disable-iomp"]}
    return settings, notes


def child(args: argparse.Namespace) -> None:
    """One process: time --steps training steps of one preset; print a JSON list of step times."""
    import time

    import torch

    sys.path.insert(0, str(ROOT / "examples" / "dfcvae"))
    sys.path.insert(0, str(HERE))
    import bench_lib
    from dfcvae.objective import DFCObjective
    from dfcvae.vae import VAE

    os.environ.setdefault("PERCEPTLOSS_OFFLINE", "1")
    torch.manual_seed(0)
    model, obj = VAE(), DFCObjective(args.preset)
    x = torch.rand(args.batch, 3, 64, 64)
    if args.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    fwd = torch.compile(model) if args.compile else model
    loss_fn = torch.compile(obj) if args.compile else obj
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.5, 0.999))
    times = []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp):
            recon, mean, logvar = fwd(x)
            terms = loss_fn(recon, x, mean, logvar)
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
        opt.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    print("STEP_TIMES " + json.dumps(times), flush=True)
    print(f"PEAK_RSS_MIB {bench_lib.proc_status_mib('VmHWM'):.0f}", flush=True)


def run_child(setting: dict, preset: str, args: argparse.Namespace) -> tuple[list[float], float] | str:
    cmd = [sys.executable, *setting["launcher"], str(Path(__file__).resolve()), "--child", "--presets", preset,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch)]
    cmd += [f for f, on in (("--no-amp", not args.amp), ("--no-channels-last", not args.channels_last),
                            ("--compile", args.compile)) if on]
    env = {**os.environ, **setting["env"]}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    found = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("STEP_TIMES ", "PEAK_RSS_MIB ")))
    if "STEP_TIMES" in found:
        return json.loads(found["STEP_TIMES"]), float(found.get("PEAK_RSS_MIB", "nan"))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return f"failed (exit {proc.returncode}): {tail[:150]}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="pvae,vae123,vae345")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.preset = args.presets
        child(args)
        return 0
    settings, notes = launch_settings()
    rows = []
    for preset in args.presets.split(","):
        times: dict[str, list[float]] = {label: [] for label in settings}
        peaks: dict[str, list[float]] = {label: [] for label in settings}
        failures: dict[str, str] = {}
        for r in range(args.rounds):
            for label, setting in settings.items():
                if label in failures:
                    continue
                got = run_child(setting, preset, args)
                if isinstance(got, str):
                    failures[label] = got
                    print(f"{preset} round {r + 1}: {label}: {got}", flush=True)
                    continue
                times[label] += got[0]
                peaks[label].append(got[1])
                print(f"{preset} round {r + 1}: {label}: {statistics.median(got[0]) * 1e3:.0f} ms, peak RSS {got[1]:.0f} MiB",
                      flush=True)
        base = statistics.median(times["default (glibc malloc)"]) if times["default (glibc malloc)"] else None
        for label in settings:
            if label in failures:
                rows.append(f"| {preset} | {label} | {failures[label]} | | | |")
                continue
            med = statistics.median(times[label])
            rows.append(f"| {preset} | {label} | {med * 1e3:.0f} | {args.batch / med:.1f} | "
                        f"{base / med:.2f}x | {max(peaks[label]):.0f} |" if base else "")
    import torch

    today = datetime.date.today().isoformat()
    step = ("bf16 autocast" if args.amp else "fp32") + (", channels_last" if args.channels_last else "") + \
        (", torch.compile" if args.compile else "")
    text = "\n".join([
        f"# DFC-VAE training step under CPU launch settings ({today})", "",
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, batch {args.batch} at 64x64, {step}; "
        f"{args.rounds} rounds x {args.steps} steps per setting (fresh process each), settings round-robin, medians.",
        "", "Reproduce: `python benchmarks/launch.py`", "",
        "| preset | launch | ms / step | images/s | speed vs default | peak RSS MiB |", "|---|---|---|---|---|---|",
        *rows, "",
        *[f"- {n}" for n in notes]])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"cpu-{today}-launch.md"
    path.write_text(text + "\n")
    print(text)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
