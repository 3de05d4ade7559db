#!/usr/bin/env python
"""Benchmarks: the fused operator vs eager PyTorch and torch.compile, the whole loss vs naive and peer
implementations, and the DFC-VAE training step with each optimisation switched on in turn.

    python benchmarks/run.py                       # everything, on CUDA when available, else CPU
    python benchmarks/run.py --only operator --device cpu --repeats 5

Prints markdown tables and writes them to benchmarks/results/<device>-<date>.md (with machine and versions).
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples" / "dfcvae"))

import bench_lib as bl  # noqa: E402


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _ms(t: float) -> str:
    return f"{t * 1e3:.2f}"


def bench_operator(device: str, repeats: int, cases: list[str]) -> str:
    """Fused operator vs torch.compile / eager of the same per-sample distance, and the read floor."""
    has = perceptloss_has(device)
    bandwidth = bl.copy_bandwidth(device)
    out = [f"Measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write of a 256 MiB fp32 copy).\n"]
    rows = []
    for case in cases:
        for dtype in (torch.float32, torch.bfloat16):
            a, b, w = bl.make_features(case, dtype, device, requires_grad=True)
            nbytes = 2 * sum(t.numel() for t in a) * a[0].element_size()
            fwd = {"torch.compile per-sample": lambda: bl.compiled_eager(a, b, w),
                   "eager per-sample": lambda: bl.eager_per_sample(a, b, w),
                   "read floor: torch.dot(a, b)": lambda: bl.read_floor(a, b, w),
                   "read floor: a.sum() + b.sum()": lambda: bl.read_floor_sum(a, b, w)}
            if has:
                fwd = {"fused op": lambda: bl.fused(a, b, w), **fwd}
            with torch.no_grad():
                tf = bl.interleaved_medians(fwd, device, repeats=repeats)
            floor = min(tf["read floor: torch.dot(a, b)"], tf["read floor: a.sum() + b.sum()"])
            grad = lambda fn: lambda: torch.autograd.grad(fn(a, b, w).sum(), a)  # noqa: E731
            bwd = {"torch.compile per-sample": grad(bl.compiled_eager), "eager per-sample": grad(bl.eager_per_sample)}
            if has:
                bwd = {"fused op": grad(bl.fused), **bwd}
                if device == "cpu":
                    bwd["fused op, gradient cache off"] = bl.without_grad_cache(grad(bl.fused))
            tb = bl.interleaved_medians(bwd, device, repeats=repeats)
            dt = str(dtype).replace("torch.", "")
            for name, t in tf.items():
                rows.append([case, dt, "forward", name, _ms(t), f"{tf['torch.compile per-sample'] / t:.2f}x",
                             f"{floor / t:.0%}", f"{nbytes / t / 1e9:.1f}", f"{nbytes / t / bandwidth:.0%}"])
            for name, t in tb.items():
                rows.append([case, dt, "forward+backward", name, _ms(t), f"{tb['torch.compile per-sample'] / t:.2f}x",
                             "", "", ""])
    out.append(table(["case", "dtype", "pass", "contender", "ms", "speed vs compile", "of read floor",
                      "GB/s read", "of copy BW"], rows))
    out.append("\nInterleaved medians (A B C A B C ...) on the same inputs: VGG19 relu1_1..relu5_1 feature shapes, "
               "`a` requires grad, `b` does not. Read floor: the faster of one `torch.dot(a, b)` and one "
               "`a.sum() + b.sum()` per layer (each element read once). torch.compile compiles the per-sample "
               "eager distance (`feature_distance_reference`), dynamic=False. \"gradient cache off\" allocates "
               "fresh gradient buffers every call (`perceptloss.set_cpu_grad_cache(False)`).")
    if has and device == "cpu":
        out.append("\n" + bench_levels(repeats, cases[0]))
    return "\n".join(out)


def bench_levels(repeats: int, case: str) -> str:
    """The fused operator at each CPU instruction level built into it."""
    from perceptloss.cpu_kernels import cpu_kernel_levels, forced_cpu_kernel_level

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        a, b, w = bl.make_features(case, dtype, "cpu", requires_grad=True)

        def at(level, fn):
            def run():
                with forced_cpu_kernel_level(level):
                    return fn()
            return run

        with torch.no_grad():
            tf = bl.interleaved_medians({lv: at(lv, lambda: bl.fused(a, b, w)) for lv in cpu_kernel_levels()}, "cpu",
                                        repeats=repeats)
        tb = bl.interleaved_medians({lv: at(lv, lambda: torch.autograd.grad(bl.fused(a, b, w).sum(), a))
                                     for lv in cpu_kernel_levels()}, "cpu", repeats=repeats)
        for lv in tf:
            rows.append([case, str(dtype).replace("torch.", ""), lv, _ms(tf[lv]), _ms(tb[lv])])
    return ("Fused operator per CPU level (`ATEN_CPU_CAPABILITY` picks the default; "
            "`perceptloss.cpu_kernels.forced_cpu_kernel_level` here):\n\n" +
            table(["case", "dtype", "level", "forward ms", "forward+backward ms"], rows))


def perceptloss_has(device: str) -> bool:
    import perceptloss

    return perceptloss.has_kernel(torch.device(device).type)


# ------------------------------------------------------------------------------------------- whole loss

LOSS_CASES = {"N16-64px": (16, 64), "N4-256px": (4, 256)}
RELU_X1 = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


def loss_contenders(device: str) -> dict[str, object]:
    """label -> builder() -> loss(x, y): ours, the hand-written loss and the peers; all frozen, random weights."""
    import peers
    from perceptloss import LPIPS, FeatureLoss

    def ours(layers, **kw):
        return lambda: FeatureLoss("vgg19", layers, weights=None, **kw).to(device)  # default checks on

    def handwritten(autocast=False):
        def build():
            loss = bl.HandWrittenVGGLoss().to(device)
            if not autocast:
                return loss

            def run(x, y):
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                    return loss(x, y)
            return run
        return build

    contenders = {
        "perceptloss FeatureLoss(dfc123), fp32": ours("dfc123"),
        "perceptloss FeatureLoss(dfc123), fp32, fused=False": ours("dfc123", fused=False),
        "hand-written VGG19 relu1_1..3_1 (mse_loss), fp32": handwritten(),
        "perceptloss FeatureLoss(dfc123, dtype=bfloat16)": ours("dfc123", dtype=torch.bfloat16),
        "hand-written VGG19 relu1_1..3_1, autocast bf16": handwritten(autocast=True),
        "perceptloss FeatureLoss(relu1_1..relu5_1), fp32": ours(RELU_X1),
        "perceptloss LPIPS(vgg), fp32": lambda: LPIPS(net="vgg", weights=None, reduction="mean").to(device),
    }
    for label, build in peers.PEERS.items():
        contenders[label] = (lambda build=build: build(device))
    return contenders


def _peak_memory(label: str, device: str, case: str, queue) -> None:
    """Runs in a fresh process: peak memory of a few fwd+bwd calls of one contender, over what it held before.

    CPU: the kernel's peak-RSS mark (VmHWM) is reset after building the contender and its inputs (Linux:
    /proc/self/clear_refs), so the figure is the growth during the calls: activations, gradients, workspaces.
    """
    os.environ.setdefault("PERCEPTLOSS_OFFLINE", "1")
    try:
        fn = loss_contenders(device)[label]()
        n, size = LOSS_CASES[case]
        x = torch.rand(n, 3, size, size, device=device, requires_grad=True)
        y = torch.rand(n, 3, size, size, device=device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 2**20
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            base = bl.proc_status_mib("VmRSS")
        for _ in range(3):
            torch.autograd.grad(fn(x, y), x)
        if device.startswith("cuda"):
            queue.put(torch.cuda.max_memory_allocated() / 2**20 - base)
        else:
            queue.put(bl.proc_status_mib("VmHWM") - base)
    except Exception as e:  # noqa: BLE001 - reported in the table
        queue.put(f"{type(e).__name__}: {e}")


def peak_memory(label: str, device: str, case: str) -> str:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_memory, args=(label, device, case, q))
    p.start()
    p.join()
    got = q.get() if not q.empty() else "no result"
    return f"{got:.0f}" if isinstance(got, float) else str(got)[:80]


def bench_loss(device: str, repeats: int, cases: list[str]) -> str:
    import peers

    status = dict(peers.peer_status(device))
    builders = loss_contenders(device)
    fns, notes = {}, []
    for label, build in builders.items():
        if status.get(label, "ok") != "ok":
            notes.append(f"- {label}: not timed, {status[label]}")
            continue
        fns[label] = build()
    rows = []
    for case in cases:
        n, size = LOSS_CASES[case]
        torch.manual_seed(0)
        x = torch.rand(n, 3, size, size, device=device, requires_grad=True)
        y = torch.rand(n, 3, size, size, device=device)
        runs = {label: (lambda fn=fn: torch.autograd.grad(fn(x, y), x)) for label, fn in fns.items()}
        times = bl.interleaved_medians(runs, device, warmup=2, repeats=repeats)
        base = times["hand-written VGG19 relu1_1..3_1 (mse_loss), fp32"]
        for label, t in times.items():
            rows.append([case, label, f"{t * 1e3:.1f}", f"{base / t:.2f}x", peak_memory(label, device, case)])
    mem = "peak CUDA memory allocated" if device.startswith("cuda") else "peak RSS"
    return (table(["case", "contender", "ms (fwd+bwd)", "speed vs hand-written fp32", f"peak MiB ({mem}) during fwd+bwd"], rows) +
            "\n\nInterleaved medians on the same images; input requires grad, target does not; random trunk "
            "weights everywhere (cost does not depend on the values; peers built offline by benchmarks/peers.py). "
            "Peak memory: in a separate fresh process per contender, the peak over 3 calls above what the process held "
            "after building the loss and the images (CPU: VmHWM reset through /proc/self/clear_refs). LPIPS rows run VGG16 "
            "relu1_2..relu5_3; piq's run every module of the trunk.\n" + "\n".join(notes))


# ---------------------------------------------------------------------------------------- training step


def bench_train_step(device: str, repeats: int, batch: int) -> str:
    from objective import DFCObjective
    from vae import VAE

    settings = [
        ("baseline (eager distance, NCHW, fp32)", dict(fused=False, memory_format="contiguous")),
        ("+ fused op", dict(fused=None, memory_format="contiguous")),
        ("+ channels_last loss network (FeatureLoss default)", dict(fused=None)),
        ("+ bf16 autocast", dict(fused=None, amp=True)),
        ("+ channels_last VAE", dict(fused=None, amp=True, cl=True)),
        ("+ torch.compile", dict(fused=None, amp=True, cl=True, compile=True)),
    ]
    rows = []
    for preset in ("vae123", "vae345", "pvae"):
        steps, failed = {}, {}
        for label, s in settings:
            if preset == "pvae" and ("fused" in label or "loss network" in label):
                continue  # no feature loss
            torch.manual_seed(0)
            model = VAE().to(device)
            obj = DFCObjective(preset, fused=s.get("fused")).to(device)
            if obj.feature_loss is not None and "memory_format" in s:
                obj.feature_loss.memory_format = s["memory_format"]
            x = torch.rand(batch, 3, 64, 64, device=device)
            if s.get("cl"):
                model = model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            opt = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.5, 0.999))
            fwd = torch.compile(model) if s.get("compile") else model
            loss_fn = torch.compile(obj) if s.get("compile") else obj

            def step(s=s, fwd=fwd, loss_fn=loss_fn, opt=opt, x=x):
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bool(s.get("amp"))):
                    recon, mean, logvar = fwd(x)
                    terms = loss_fn(recon, x, mean, logvar)
                opt.zero_grad(set_to_none=True)
                terms.total.backward()
                opt.step()

            try:
                step()  # compiles where asked; a failing switch is reported instead of hiding the other rows
                steps[label] = step
            except Exception as e:  # noqa: BLE001
                first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
                failed[label] = f"{type(e).__name__}: {first}"
        times = bl.interleaved_medians(steps, device, warmup=2, repeats=repeats)
        for label, _ in settings:
            if label in times:
                rows.append([preset, label, f"{times[label] * 1e3:.0f}", f"{batch / times[label]:.1f}"])
            elif label in failed:
                rows.append([preset, label, "failed", failed[label]])
    return table(["preset", "setting (cumulative)", "ms / step", "images/s"], rows) + \
        f"\n\nBatch {batch} at 64x64, synthetic images, Adam; each row adds one switch to the row above; the " \
        "settings of one preset are timed interleaved (medians)."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=["operator", "loss", "train"], default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cases", default=",".join(bl.CASES), help="operator cases: " + ", ".join(bl.CASES))
    parser.add_argument("--loss-cases", default=",".join(LOSS_CASES), help="whole-loss cases: " + ", ".join(LOSS_CASES))
    parser.add_argument("--batch", type=int, default=64, help="training-step batch")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    os.environ.setdefault("PERCEPTLOSS_OFFLINE", "1")
    cases = args.cases.split(",")
    today = datetime.date.today().isoformat()
    parts = [f"# perceptloss benchmarks ({args.device}, {today})", "", bl.describe_machine(args.device), "",
             "Reproduce: `python benchmarks/run.py" + (f" --device {args.device}" if args.device != "cuda" else "") + "`", ""]
    sections = {"operator": ("## 1. Fused operator", lambda: bench_operator(args.device, args.repeats, cases)),
                "loss": ("## 2. Whole loss (VGG19 + distance, forward + backward)", lambda: bench_loss(args.device, max(3, args.repeats // 2), args.loss_cases.split(","))),
                "train": ("## 3. DFC-VAE training step", lambda: bench_train_step(args.device, max(3, args.repeats // 2), args.batch))}
    for key, (title, fn) in sections.items():
        if args.only and key != args.only:
            continue
        print(title, flush=True)
        body = fn()
        print(body + "\n", flush=True)
        parts += [title, "", body, ""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.only}" if args.only else ""
    path = out / f"{torch.device(args.device).type}-{today}{suffix}.md"
    path.write_text("\n".join(parts))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
