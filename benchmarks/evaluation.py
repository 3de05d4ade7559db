#!/usr/bin/env python
"""Evaluation throughput: perceptloss' metrics against the peers' own evaluation loops, forward only.

    python benchmarks/evaluation.py [--nets vgg,alex,dists] [--sizes 64,256] [--pairs 64] [--repeats 5]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/evaluation.py   # as an AVX2-only CPU

What a user waits for when scoring image pairs: the metric on in-memory (N, 3, H, W) [0, 1] pairs, no gradient
(decoding the files is the same for everybody and left out). Per LPIPS trunk and image size, every contender
scores the same ``--pairs`` random pairs with **the same weights**: one random trunk (the cost does not depend on
the values) given to all of them, and LPIPS' published linear heads (from the lpips wheel, which perceptloss and
torchmetrics read too; piq gets the same tensors in place of its download).

- ``perceptloss (default)``: ``perceptloss.create_metric("lpips-<net>", weights=<the trunk file>)`` in batches of
  ``perceptloss.score``'s default size under ``torch.inference_mode()``: what ``perceptloss score`` runs, with
  the precision it picks by default (``dtype="auto"``: bfloat16 where the hardware computes it natively);
- ``perceptloss fp32``: the same with ``dtype=None`` (float32);
- ``lpips (batched)``: ``lpips.LPIPS(net=...)(x, y, normalize=True)`` under ``torch.no_grad()`` in the same
  batches: the fastest way to drive the lpips package;
- ``lpips (lpips_2dirs.py)``: the package's own directory script, one pair at a time with autograd on;
- ``torchmetrics``: ``LearnedPerceptualImagePatchSimilarity(net_type=..., normalize=True).update`` per batch
  under ``torch.no_grad()``, ``compute()`` at the end;
- ``piq``: ``piq.LPIPS(reduction="none")`` (VGG only) per batch under ``torch.no_grad()``.

``--nets dists``: DISTS, every contender with the official model's random VGG16 trunk and the published α/β:
``perceptloss.create_metric("dists", ...)`` (default and float32, as above); ``DISTS_pytorch (batched)``, the
official ``DISTS_pt.DISTS`` per batch (``batch_average=False``, the reference values); ``torchmetrics``'s
``DeepImageStructureAndTextureSimilarity.update`` per batch (it builds its network anew in every update, reading
torchvision's VGG16 and α/β from disk: here it gets one network built once, which spares it that cost); ``piq``'s
``DISTS(reduction="none")`` per batch (its own implementation of the formulas).

All contenders are timed interleaved in one process (a new seeded order per round, medians of whole passes
over the pairs). The table gives pairs per second, the speed relative to the fastest peer, and the largest
relative difference of the per-pair values from the reference implementation's (lpips; DISTS_pytorch for DISTS;
torchmetrics: of the mean). Prints markdown
and writes it to ``--output`` or ``benchmarks/results/cpu-<date>-<kind>-evaluation.md``, headed by the machine.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable
from unittest import mock

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_lib as bl  # noqa: E402
from peers import installed_version, no_downloads  # noqa: E402

NETS = ("vgg", "alex", "dists")
#: perceptloss' metric name for each ``--nets`` entry, and the implementation every contender's values are compared to.
METRIC = {"vgg": "lpips-vgg", "alex": "lpips-alex", "dists": "dists"}
REFERENCE = {"vgg": "lpips (batched)", "alex": "lpips (batched)", "dists": "DISTS_pytorch (batched)"}
#: A contender scores all pairs and returns the values it reports: (pairs,) per pair, or a 0-dim mean.
Contender = Callable[[], torch.Tensor]


def lpips_reference(net: str) -> torch.nn.Module:
    """The lpips package's metric: a random trunk (seeded), its published heads, frozen."""
    import lpips

    torch.manual_seed(0)
    with no_downloads():
        ref = lpips.LPIPS(net=net, pnet_rand=True, pretrained=True, verbose=False)
    return ref.eval().requires_grad_(False)


def trunk_state(ref: torch.nn.Module) -> dict[str, torch.Tensor]:
    """lpips' ``net.sliceK.<index>.*`` trunk tensors under torchvision's ``features.<index>.*`` names."""
    return {re.sub(r"^net\.slice\d+\.", "features.", k): v for k, v in ref.state_dict().items()
            if k.startswith("net.")}


def trunk_file(ref: torch.nn.Module, folder: Path, net: str) -> Path:
    """``trunk_state(ref)`` saved as a torchvision checkpoint in ``folder``."""
    path = folder / f"{net}-random-trunk.pth"
    torch.save(trunk_state(ref), path)
    return path


def heads_of(ref: torch.nn.Module) -> list[torch.Tensor]:
    """lpips' per-layer heads as (1, C, 1, 1) tensors (the form piq downloads)."""
    return [lin.model[-1].weight.detach().clone() for lin in ref.lins]


def batches(x: torch.Tensor, y: torch.Tensor, size: int):
    for i in range(0, len(x), size):
        yield x[i:i + size], y[i:i + size]


def perceptloss_contender(net: str, trunk: Path, dtype: object, batch: int, x, y) -> Contender:
    import perceptloss

    metric = perceptloss.create_metric(METRIC[net], weights=str(trunk), dtype=dtype)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([metric(a, b).float() for a, b in batches(x, y, batch)])
    run.signature = metric.signature  # type: ignore[attr-defined]
    return run


def batched(score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch: int, x, y) -> Contender:
    """A peer's metric called per batch under ``torch.no_grad()``, its per-pair values concatenated."""
    def run() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([score(a, b).flatten() for a, b in batches(x, y, batch)])
    return run


def lpips_batched(ref: torch.nn.Module, batch: int, x, y) -> Contender:
    return batched(lambda a, b: ref(a, b, normalize=True), batch, x, y)


def lpips_script_loop(ref: torch.nn.Module, x, y) -> Contender:
    """As lpips_2dirs.py: one (1, 3, H, W) pair per call in [-1, 1], autograd left on, a float per pair."""
    def run() -> torch.Tensor:
        out = []
        for a, b in zip(x, y):
            d = ref(a[None] * 2 - 1, b[None] * 2 - 1)
            out.append(float(d))
        return torch.tensor(out)
    return run


def torchmetrics_contender(net: str, ref: torch.nn.Module, batch: int, x, y) -> Contender:
    from torchmetrics.image import lpip

    random_trunk = functools.partial(lpip._NoTrainLpips, pnet_rand=True)
    with no_downloads(), mock.patch.object(lpip, "_NoTrainLpips", random_trunk):
        metric = lpip.LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="mean", normalize=True)
    metric.net.load_state_dict(ref.state_dict(), strict=False)  # the same trunk (its heads are lpips' own already)
    metric = metric.eval().requires_grad_(False)

    def run() -> torch.Tensor:
        metric.reset()
        with torch.no_grad():
            for a, b in batches(x, y, batch):
                metric.update(a, b)
            return metric.compute()
    return run


@contextlib.contextmanager
def piq_offline(trunk: dict[str, torch.Tensor], download: object):
    """piq builds its VGG16 with ``trunk``'s tensors and gets ``download`` in place of its weights download."""
    import piq.perceptual
    import torchvision

    def vgg16(*args: object, **kwargs: object) -> torch.nn.Module:
        model = torchvision.models.vgg16(weights=None)
        model.load_state_dict(trunk, strict=False)
        return model

    with no_downloads(), mock.patch.object(piq.perceptual, "vgg16", vgg16), \
            mock.patch.object(torch.hub, "load_state_dict_from_url", lambda *a, **k: download):
        yield


def piq_contender(ref: torch.nn.Module, batch: int, x, y) -> Contender:
    import piq

    with piq_offline(trunk_state(ref), heads_of(ref)):
        return batched(piq.LPIPS(reduction="none").eval().requires_grad_(False), batch, x, y)


def dists_reference() -> torch.nn.Module:
    """The official ``DISTS_pytorch`` 0.1 metric with a random VGG16 trunk (seeded; its torchvision call would
    download) and the published α/β from its wheel, frozen."""
    import torchvision
    from DISTS_pytorch import DISTS_pt

    import perceptloss.dists
    from perceptloss.weights import find_source

    torch.manual_seed(0)
    with mock.patch.object(DISTS_pt, "models", mock.Mock(vgg16=lambda pretrained=True: torchvision.models.vgg16(weights=None))):
        ref = DISTS_pt.DISTS(load_weights=False)
    published = torch.load(find_source(perceptloss.dists.DISTS_ENTRY), map_location="cpu", weights_only=True)
    ref.alpha.data, ref.beta.data = published["alpha"], published["beta"]
    return ref.eval().requires_grad_(False)


def dists_trunk_file(ref: torch.nn.Module, folder: Path) -> Path:
    """The official model's ``stageK.<index>.*`` convolutions as a torchvision VGG16 checkpoint in ``folder``."""
    path = folder / "dists-random-trunk.pth"
    torch.save({"features." + k.split(".", 1)[1]: v for k, v in ref.state_dict().items()
                if k.startswith("stage") and not k.endswith(".filter")}, path)
    return path


def dists_official_batched(ref: torch.nn.Module, batch: int, x, y) -> Contender:
    return batched(lambda a, b: ref(a, b, batch_average=False), batch, x, y)


def dists_torchmetrics(ref: torch.nn.Module, batch: int, x, y) -> Contender:
    """torchmetrics' DISTS metric, ``update`` per batch. It builds its network anew in every ``update`` (loading
    torchvision's VGG16 and α/β from disk); here that network is built once, with the reference's weights, and handed
    to every ``update``: the peer's loop without its rebuilding cost (generous to it)."""
    import torchvision
    from torchmetrics.functional.image import dists as tm_dists
    from torchmetrics.image import DeepImageStructureAndTextureSimilarity

    with no_downloads(), mock.patch.object(tm_dists, "vgg16", lambda weights=None: torchvision.models.vgg16(weights=None)):
        network = tm_dists.DISTSNetwork(load_weights=False)
    network.load_state_dict(ref.state_dict())  # the same trunk, L2 pooling filters and α/β
    network = network.eval().requires_grad_(False)
    metric = DeepImageStructureAndTextureSimilarity(reduction="mean")

    def run() -> torch.Tensor:
        metric.reset()
        with torch.no_grad(), mock.patch.object(tm_dists, "DISTSNetwork", lambda: network):
            for a, b in batches(x, y, batch):
                metric.update(a, b)
            return metric.compute()
    return run


def dists_piq(ref: torch.nn.Module, trunk: Path, batch: int, x, y) -> Contender:
    import piq

    alpha_beta = {"alpha": ref.alpha.detach().clone(), "beta": ref.beta.detach().clone()}
    with piq_offline(torch.load(trunk, map_location="cpu", weights_only=True), alpha_beta):
        return batched(piq.DISTS(reduction="none").eval().requires_grad_(False), batch, x, y)


def relative_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| / max |expected| over the pairs (a mean against the mean when ``got`` is 0-dim)."""
    got, expected = got.double().flatten(), expected.double().flatten()
    if got.numel() == 1 and expected.numel() > 1:
        expected = expected.mean().reshape(1)
    return float((got - expected).abs().max() / expected.abs().max())


def contenders(net: str, size: int, pairs: int, batch: int, folder: Path) -> dict[str, Contender]:
    g = torch.Generator().manual_seed(size)
    x = torch.rand(pairs, 3, size, size, generator=g)
    y = (x + 0.2 * torch.randn(pairs, 3, size, size, generator=g)).clamp(0, 1)  # related pairs, as in practice
    if net == "dists":
        ref = dists_reference()
        trunk = dists_trunk_file(ref, folder)
        out = {"perceptloss (default)": perceptloss_contender(net, trunk, "auto", batch, x, y),
               "perceptloss fp32": perceptloss_contender(net, trunk, None, batch, x, y),
               "DISTS_pytorch (batched)": dists_official_batched(ref, batch, x, y)}
        optional = {"torchmetrics": lambda: dists_torchmetrics(ref, batch, x, y),
                    "piq": lambda: dists_piq(ref, trunk, batch, x, y)}
    else:
        ref = lpips_reference(net)
        trunk = trunk_file(ref, folder, net)
        out = {"perceptloss (default)": perceptloss_contender(net, trunk, "auto", batch, x, y),
               "perceptloss fp32": perceptloss_contender(net, trunk, None, batch, x, y),
               "lpips (batched)": lpips_batched(ref, batch, x, y),
               "lpips (lpips_2dirs.py)": lpips_script_loop(ref, x, y)}
        optional = {"torchmetrics": lambda: torchmetrics_contender(net, ref, batch, x, y)}
        if net == "vgg":
            optional["piq"] = lambda: piq_contender(ref, batch, x, y)
    for name, make in optional.items():  # peers beside the reference implementation, where installed
        if importlib.util.find_spec(name) is None:
            NOT_INSTALLED.add(name)
        else:
            out[name] = make()
    return out


#: Optional peers (torchmetrics, piq) that were not installed, so not measured: the result file names them.
NOT_INSTALLED: set[str] = set()


PEERS = ("lpips (batched)", "lpips (lpips_2dirs.py)", "torchmetrics", "piq", "DISTS_pytorch (batched)")


def measure(args: argparse.Namespace) -> str:
    from perceptloss.score.batching import auto_batch_size

    lines = ["| metric | size | contender | pairs/s | vs fastest peer | max rel. difference from the reference |",
             "|---|---|---|---|---|---|"]
    signatures = []
    with tempfile.TemporaryDirectory() as tmp:
        for net in args.nets:
            for size in args.sizes:
                pairs = args.pairs or max(16, 64 * 64 * 64 // (size * size))
                batch = args.batch or auto_batch_size((size, size))  # the score CLI's default
                fns = contenders(net, size, pairs, batch, Path(tmp))
                values = {name: fn() for name, fn in fns.items()}  # also the warm-up
                times = bl.interleaved_medians(fns, "cpu", warmup=1, repeats=args.repeats)
                rate = {name: pairs / t for name, t in times.items()}
                fastest_peer = max(rate[name] for name in fns if name in PEERS)
                expected = values[REFERENCE[net]]
                for name in fns:
                    lines.append(f"| {METRIC[net]} | {size}² | {name} | {rate[name]:.1f} | {rate[name] / fastest_peer:.2f}x | "
                                 f"{relative_difference(values[name], expected):.1e} |")
                    print(lines[-1], flush=True)
                signatures.append(f"- {METRIC[net]}, {size}²: `{fns['perceptloss (default)'].signature}`")
    pairs = args.pairs or "64 (64²) or 16 (256² and larger)"
    batches = (f"batches of {args.batch}" if args.batch else "batches of " + ", ".join(
        f"{auto_batch_size((size, size))} at {size}²" for size in args.sizes) + " (the score CLI's default, by size)")
    lines += ["", f"{pairs} pairs per contender and size, {batches} for every batched contender, "
              f"{args.repeats} interleaved rounds after one warm-up pass; wall time; {torch.get_num_threads()} threads. The reference "
              f"implementation: lpips (batched) for LPIPS, DISTS_pytorch (batched) for DISTS. Versions: lpips "
              f"{installed_version('lpips')}, DISTS_pytorch {installed_version('dists-pytorch')}, torchmetrics "
              f"{installed_version('torchmetrics')}, piq {installed_version('piq')}.", "",
              *([f"Not installed, so not measured: {', '.join(sorted(NOT_INSTALLED))}.", ""] if NOT_INSTALLED else []),
              "The default contender's signatures (the precision it picked is in `dtype:`):", *signatures]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", default="vgg,alex,dists",
                        help="comma-separated metrics: LPIPS trunks and dists, of " + ", ".join(NETS))
    parser.add_argument("--sizes", default="64,256", help="comma-separated image sides in pixels")
    parser.add_argument("--pairs", type=int, default=None,
                        help="pairs each contender scores per round (default: 64 at 64², fewer for larger images, "
                             "the same pixels, at least 16)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the score CLI's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--output", default=None,
                        help="the result file (default benchmarks/results/cpu-<date>-<kind>-evaluation.md)")
    bl.add_memory_option(parser)
    args = parser.parse_args(argv)
    memory = bl.apply_memory_option(args)
    args.nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    if any(n not in NETS for n in args.nets):
        raise SystemExit(f"--nets: choose among {', '.join(NETS)}, got {args.nets}")
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    os.environ.setdefault("PERCEPTLOSS_OFFLINE", "1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning, module="torchmetrics")
    head = bl.result_head("Evaluation throughput, " + " and ".join(
        dict.fromkeys("DISTS" if n == "dists" else "LPIPS" for n in args.nets)), "cpu", "evaluation.py", argv)
    print("\n".join(head), flush=True)
    body = measure(args)  # prints each row as it is measured
    print(body.split("\n\n", 1)[1], flush=True)  # then what follows the table
    path = bl.result_file(args.output, "evaluation" + memory)
    bl.write_result("\n".join(head) + "\n" + body + "\n", path)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
