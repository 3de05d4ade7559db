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
import resource
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


def bench_operator(device: str, repeats: int, cases: list[str]) -> str:
    bandwidth = bl.copy_bandwidth(device)
    out = [f"Measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write of a 256 MiB fp32 copy).\n"]
    rows = []
    for case in cases:
        for dtype in (torch.float32, torch.bfloat16):
            for mode in ("forward", "forward+backward"):
                a, b, w = bl.make_features(case, dtype, device, requires_grad=mode != "forward")
                numel = sum(t.numel() for t in a)
                # forward reads a and b; the fused backward reads a, b again and writes grad_a
                nbytes = numel * a[0].element_size() * (2 if mode == "forward" else 5)
                times = {}
                for name, fn in bl.OPERATOR_CONTENDERS.items():
                    if name == "fused op" and not perceptloss_has(device):
                        continue
                    if mode == "forward":
                        run = lambda fn=fn: fn(a, b, w)  # noqa: E731
                    else:
                        run = lambda fn=fn: torch.autograd.grad(fn(a, b, w).sum(), a)  # noqa: E731
                    with torch.no_grad() if mode == "forward" else torch.enable_grad():
                        times[name] = bl.median_time(run, device, repeats=repeats)
                base = times["eager mse_loss sum"]
                for name, t in times.items():
                    rows.append([case, str(dtype).replace("torch.", ""), mode, name, f"{t * 1e3:.2f}",
                                 f"{base / t:.2f}x", f"{nbytes / 1e6:.0f}", f"{nbytes / t / 1e9:.1f}",
                                 f"{nbytes / t / bandwidth:.0%}"])
    out.append(table(["case", "dtype", "pass", "contender", "ms", "vs eager mse", "MB moved", "GB/s", "of copy BW"], rows))
    out.append("\nMB moved is the minimum traffic of a fused implementation (forward: read a and b; forward+backward: "
               "read a, b twice, write grad_a); the same figure is used for every contender.")
    return "\n".join(out)


def perceptloss_has(device: str) -> bool:
    import perceptloss

    return perceptloss.has_kernel(torch.device(device).type)


# ------------------------------------------------------------------------------------------- whole loss


def _loss_contender(name: str, device: str, case: str, repeats: int, queue) -> None:
    """Runs in a fresh process so that peak memory is this contender's own."""
    import torchvision

    from perceptloss import FeatureLoss

    torch.manual_seed(0)
    n, size = bl.CASES[case]
    x = torch.rand(n, 3, size, size, device=device, requires_grad=True)
    y = torch.rand(n, 3, size, size, device=device)
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    if name.startswith("perceptloss"):
        loss = FeatureLoss("vgg19", layers, fused=name.endswith("fused"), check_inputs=False).to(device)
        fn = lambda: torch.autograd.grad(loss(x, y), x)  # noqa: E731
    elif name == "naive (full VGG19, concat, in-place ReLU)":
        net = torchvision.models.vgg19(weights=None).features.to(device).eval()  # random init: same cost
        for p in net.parameters():
            p.requires_grad_(False)
        taps = {1, 6, 11, 20, 29}
        mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

        def fn():
            h = (torch.cat([x, y]) - mean) / std
            total = 0
            for i, m in enumerate(net):  # runs all 37 modules, like the usual copy-pasted loss
                h = m(h)
                if i in taps:
                    fx, fy = h.chunk(2)
                    total = total + torch.nn.functional.mse_loss(fx, fy.detach())
            return torch.autograd.grad(total, x)
    else:
        queue.put((name, None, None, "unknown contender"))
        return
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = bl.median_time(fn, device, warmup=2, repeats=repeats)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((name, t, peak, ""))


def peer_contenders() -> list[tuple[str, str]]:
    """Other perceptual-loss libraries that are installed and can load weights offline (else a reason)."""
    found = []
    for module, label in (("lpips", "lpips (VGG)"), ("piq", "piq LPIPS"), ("torchmetrics", "torchmetrics LPIPS")):
        try:
            __import__(module)
            found.append((label, f"{module} is installed but its weights are downloaded at first use; "
                                 "offline it cannot load them, so it is not timed"))
        except ImportError:
            found.append((label, f"{module} is not installed"))
    return found


def bench_loss(device: str, repeats: int, cases: list[str]) -> str:
    ctx = mp.get_context("spawn")
    rows = []
    names = ["perceptloss fused", "perceptloss eager", "naive (full VGG19, concat, in-place ReLU)"]
    for case in cases:
        results = {}
        for name in names:
            if name == "perceptloss fused" and not perceptloss_has(device):
                continue
            q = ctx.Queue()
            p = ctx.Process(target=_loss_contender, args=(name, device, case, repeats, q))
            p.start()
            p.join()
            if not q.empty():
                n, t, peak, note = q.get()
                results[n] = (t, peak)
        base = results["naive (full VGG19, concat, in-place ReLU)"][0]
        for name, (t, peak) in results.items():
            rows.append([case, name, f"{t * 1e3:.1f}", f"{base / t:.2f}x", f"{peak:.0f}"])
    mem = "peak CUDA memory allocated" if device.startswith("cuda") else "peak RSS of the process"
    notes = "\n".join(f"- {label}: skipped, {why}." for label, why in peer_contenders())
    return table(["case", "contender", "ms (fwd+bwd)", "vs naive", f"MiB ({mem})"], rows) + \
        "\n\nLayers relu1_1…relu5_1, input requires grad, target does not.\n" + notes


# ---------------------------------------------------------------------------------------- training step


def bench_train_step(device: str, repeats: int, batch: int) -> str:
    from objective import DFCObjective
    from vae import VAE

    settings = [
        ("baseline (eager distance, fp32)", dict(fused=False)),
        ("+ fused op", dict(fused=None)),
        ("+ bf16 autocast", dict(fused=None, amp=True)),
        ("+ channels_last", dict(fused=None, amp=True, cl=True)),
        ("+ torch.compile", dict(fused=None, amp=True, cl=True, compile=True)),
    ]
    rows = []
    for preset in ("vae123", "vae345", "pvae"):
        for label, s in settings:
            if preset == "pvae" and label in ("+ fused op",):
                continue
            torch.manual_seed(0)
            model = VAE().to(device)
            obj = DFCObjective(preset, fused=s.get("fused")).to(device)
            x = torch.rand(batch, 3, 64, 64, device=device)
            if s.get("cl"):
                model, obj = model.to(memory_format=torch.channels_last), obj.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            opt = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.5, 0.999))
            fwd = torch.compile(model) if s.get("compile") else model
            loss_fn = torch.compile(obj) if s.get("compile") else obj

            def step():
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bool(s.get("amp"))):
                    recon, mean, logvar = fwd(x)
                    terms = loss_fn(recon, x, mean, logvar)
                opt.zero_grad(set_to_none=True)
                terms.total.backward()
                opt.step()

            try:
                t = bl.median_time(step, device, warmup=3, repeats=repeats)
            except Exception as e:  # report a failing switch instead of hiding the other rows
                first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
                rows.append([preset, label, "failed", f"{type(e).__name__}: {first}"])
                continue
            rows.append([preset, label, f"{t * 1e3:.0f}", f"{batch / t:.1f}"])
    return table(["preset", "setting (cumulative)", "ms / step", "images/s"], rows) + \
        f"\n\nBatch {batch} at 64x64, synthetic images, Adam; each row adds one switch to the row above."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=["operator", "loss", "train"], default=None)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cases", default=",".join(bl.CASES), help="comma-separated: " + ", ".join(bl.CASES))
    parser.add_argument("--batch", type=int, default=64, help="training-step batch")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    os.environ.setdefault("PERCEPTLOSS_OFFLINE", "1")
    cases = args.cases.split(",")
    today = datetime.date.today().isoformat()
    parts = [f"# perceptloss benchmarks ({args.device}, {today})", "", bl.describe_machine(args.device), "",
             "Reproduce: `python benchmarks/run.py" + (f" --device {args.device}" if args.device != "cuda" else "") + "`", ""]
    sections = {"operator": ("## 1. Fused operator", lambda: bench_operator(args.device, args.repeats, cases)),
                "loss": ("## 2. Whole loss (VGG19 + distance, forward + backward)", lambda: bench_loss(args.device, max(3, args.repeats // 2), cases)),
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
