"""FDL forward+backward against the official fdl-pytorch code, and where the time goes (CPU).

    python benchmarks/fdl.py [--sizes 128,256] [--batch 1] [--projections 256] [--reps 10] [--warmup 2]
                             [--profile] [--out benchmarks/results/cpu-<date>-fdl.md]

Both losses run the same random VGG19 trunk and the same projections (``perceptloss.FDL(weights=None)``'s, copied
into the official ``FDL_loss``) on the same (N, 3, S, S) images; a step is ``loss(x, y).backward()`` with the
gradient to x. perceptloss runs twice: as built by default (``memory_format="auto"``, channels_last on the CPU)
and with ``memory_format="contiguous"``, the layout the official code runs in. The two run interleaved in one process, in a new order per round (``bench_lib.interleaved_medians``),
and the table gives their median step times. ``--profile`` adds, for each, the self CPU time of a few steps under
``torch.profiler`` grouped by what it is: the VGG19 trunk's convolutions, the 5x5 projection convolutions, the
sorts (forward and the scatter of their backward), the FFTs, amplitude and phase, and the rest. FDL needs images
of at least 80 x 80. The official package (``pip install --no-deps fdl-pytorch==1.0``) builds CUDA tensors in its
class body and downloads its VGG19 at construction; both are replaced here (a no-op ``.cuda()`` while importing, a
random trunk), as in ``tests/test_fdl.py``.
"""
from __future__ import annotations

import argparse
import types
from collections import defaultdict
from pathlib import Path
from unittest import mock

import torch

import perceptloss
from bench_lib import describe_machine, interleaved_medians, print_and_write


def official_loss(projections: int) -> torch.nn.Module:
    """The official FDL_loss on a random VGG19, without CUDA or a download."""
    import torchvision

    with mock.patch.object(torch.Tensor, "cuda", lambda self, *args, **kwargs: self):
        from FDL_pytorch import FDL as official
        from FDL_pytorch import models
    random_vgg19 = types.SimpleNamespace(vgg19=lambda pretrained=True: torchvision.models.vgg19(weights=None))
    with mock.patch.object(models, "tv", random_vgg19):
        return official.FDL_loss(num_proj=projections).eval()


#: The contenders: perceptloss' FDL as built by default (memory_format "auto": channels_last on the CPU), with the
#: network in the contiguous layout the official code runs in, and the official code.
OURS, OURS_CONTIGUOUS, OFFICIAL = "perceptloss FDL", "perceptloss FDL, contiguous", "fdl-pytorch 1.0"


def contenders(projections: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    ref = official_loss(projections)
    state = {"features." + k.split(".", 2)[2]: v for k, v in ref.state_dict().items() if k.startswith("model.stage")}
    out = {}
    for name, layout in ((OURS, "auto"), (OURS_CONTIGUOUS, "contiguous")):
        out[name] = perceptloss.FDL(weights=None, projections=projections, normalization="imagenet",
                                    memory_format=layout)
        out[name].net.load_trunk_state_dict(state)
    for k, p in enumerate(out[OURS].criterion.projection_tensors):
        getattr(ref, f"rand_{k}").data = p.clone()
    return {**out, OFFICIAL: ref}


def step(loss: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    def run() -> None:
        x.grad = None
        loss(x, y).backward()

    return run


#: Profiler op names by what they are (self time; convolutions split by their weight's kernel size).
_FFT = ("aten::_fft_r2c", "aten::_fft_c2c", "aten::_fft_c2r")
_SORT = ("aten::sort", "aten::scatter", "aten::scatter_", "aten::gather")
_PHASE = ("aten::abs", "aten::angle", "aten::atan2", "aten::hypot", "aten::sgn", "aten::view_as_real")
_CONV = ("aten::mkldnn_convolution", "mkldnn::_convolution_pointwise",  # the latter: a trunk's conv + ReLU in one
         "aten::convolution_backward", "aten::_convolution", "aten::thnn_conv2d",
         "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward", "aten::convolution", "aten::conv2d")


def category(name: str, shapes: list, patch: int) -> str:
    if name in _FFT:
        return "FFT"
    if name in _SORT:
        return "sort (+ backward scatter)"
    if name in _PHASE:
        return "amplitude, phase"
    if name in _CONV:
        kernels = [s for s in shapes if isinstance(s, list) and len(s) == 4 and s[-1] == s[-2] and s[-1] in (3, patch)]
        return "projection conv (5x5)" if any(s[-1] == patch for s in kernels) else "VGG19 convs"
    return "other"


def profile(fn, patch: int, steps: int) -> dict[str, float]:
    """Self CPU seconds per category over ``steps`` calls of ``fn`` (after one warm call)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            fn()
    out: dict[str, float] = defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        out[category(event.key, list(event.input_shapes), patch)] += event.self_cpu_time_total / 1e6 / steps
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,256", help="image sides, comma-separated (>= 80)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--projections", type=int, default=256)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also where the time goes (torch.profiler)")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the tables to this Markdown file too")
    args = parser.parse_args()
    losses = contenders(args.projections)
    lines = [describe_machine("cpu"), "",
             f"FDL forward+backward, N={args.batch}, {args.projections} projections per layer, random VGG19 trunk, "
             f"float32; median of {args.reps} interleaved steps after {args.warmup} warm-up rounds.", "",
             "| image | " + " | ".join(f"{name} (s)" for name in losses) + " | ratios |", "| --- " * (len(losses) + 2) + "|"]
    breakdowns = []
    for side in (int(s) for s in args.sizes.split(",")):
        g = torch.Generator().manual_seed(side)
        x = torch.rand(args.batch, 3, side, side, generator=g, requires_grad=True)
        y = torch.rand(args.batch, 3, side, side, generator=g)
        fns = {name: step(loss, x, y) for name, loss in losses.items()}
        med = interleaved_medians(fns, "cpu", warmup=args.warmup, repeats=args.reps)
        ratios = " / ".join(f"{med[name] / med[OFFICIAL]:.2f}" for name in (OURS, OURS_CONTIGUOUS))
        lines.append(f"| {side}x{side} | " + " | ".join(f"{med[name]:.3f}" for name in losses) + f" | {ratios} |")
        print(lines[-1], flush=True)
        if args.profile:
            breakdowns.append((side, {name: profile(fn, 5, args.profile_steps) for name, fn in fns.items()}))
    lines += ["", "ratios: each perceptloss contender's time / the official code's (below 1: perceptloss is faster)."]
    for side, per_loss in breakdowns:
        cats = sorted({c for b in per_loss.values() for c in b}, key=lambda c: -per_loss[OFFICIAL].get(c, 0))
        lines += ["", f"Self CPU time per step at {side}x{side} (torch.profiler, {args.profile_steps} steps):", "",
                  "| part | " + " | ".join(f"{name} (s)" for name in per_loss) + " |", "| --- " * (len(per_loss) + 1) + "|"]
        for c in cats:
            lines.append(f"| {c} | " + " | ".join(f"{b.get(c, 0.0):.3f}" for b in per_loss.values()) + " |")
        lines.append("| total | " + " | ".join(f"{sum(b.values()):.3f}" for b in per_loss.values()) + " |")
    text = "\n".join(lines) + "\n"
    print_and_write(text, args.out)


if __name__ == "__main__":
    main()
