"""One pass over the image pairs for all metrics, optionally sharded over torchrun ranks.

Under ``torchrun`` (WORLD_SIZE > 1) the process group is set up here (gloo on the CPU, NCCL on CUDA); rank r
scores batches r, r + K, r + 2K, ... of the same batch list a single process would use, and rank 0 gathers
every value: per-image values and the summary are those of one process.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

from .batching import Plan, load_batches
from .errors import ScoreError


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_ranks(device: str) -> Ranks:
    """Join the torchrun job described by the environment (gloo for the CPU, NCCL for CUDA), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group(backend=backend)
    return ranks


def stop_ranks(ranks: Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def rank_device(device: str, ranks: Ranks) -> torch.device:
    """``--device`` for this rank: plain "cuda" becomes cuda:<local rank> under torchrun."""
    if device == "cuda" and ranks.world > 1:
        return torch.device("cuda", ranks.local_rank)
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ScoreError(f"--device must be a torch device such as cpu, cuda or cuda:1, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ScoreError(f"--device {device}: CUDA is not available here; use --device cpu")
    return dev


def apply_tiling(metrics: dict[str, torch.nn.Module], tile: int | None) -> dict[str, torch.nn.Module]:
    """Each metric wrapped by ``perceptloss.tiling.tiled(loss, tile=tile)`` (unchanged when ``tile`` is None)."""
    if tile is None:
        return metrics
    if isinstance(tile, bool) or int(tile) != tile or tile < 1:
        raise ScoreError(f"--tile must be an integer >= 1 (pixels per tile side), got {tile!r}")
    from ..tiling import tiled

    out = {}
    for name, loss in metrics.items():
        try:
            out[name] = tiled(loss, tile=int(tile))
        except (ValueError, TypeError) as e:
            raise ScoreError(f"--tile {tile} with metric {name}: {e}") from None
    return out


@dataclass
class Results:
    """{metric: {plan index: value}} and {plan index: decode error} (all ranks' after ``gather``)."""

    values: dict[str, dict[int, float]]
    failed: dict[int, str] = field(default_factory=dict)


def progress_bar(total: int, enabled: bool) -> Callable[[int], None]:
    """A callable advancing a progress bar by n pairs: tqdm when installed, else a line every 10% on stderr."""
    if not enabled:
        return lambda n: None
    try:
        from tqdm import tqdm
    except ImportError:
        state = {"done": 0, "shown": -1}

        def plain(n: int) -> None:
            state["done"] += n
            tenth = state["done"] * 10 // max(total, 1)
            if tenth != state["shown"]:
                state["shown"] = tenth
                print(f"scored {state['done']}/{total} pairs", file=sys.stderr, flush=True)

        return plain
    bar = tqdm(total=total, unit="pair", file=sys.stderr, leave=False)

    def advance(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return advance


def score_batches(plan: Plan, batches: list[list[int]], metrics: dict[str, torch.nn.Module], device: torch.device, *,
                  workers: int, ranks: Ranks, progress: bool) -> Results:
    """Score this rank's share of ``batches`` with every metric (one decode per pair for all of them)."""
    mine = batches[ranks.rank::ranks.world]
    results = Results({name: {} for name in metrics})
    advance = progress_bar(sum(len(b) for b in mine), progress and ranks.is_main)  # rank 0's share
    with torch.inference_mode():
        for indices, ref, dist, failed in load_batches(plan, mine, workers):
            results.failed.update(failed)
            if indices:
                ref, dist = ref.to(device), dist.to(device)
                for name, loss in metrics.items():
                    values = loss(dist, ref).detach().float().reshape(len(indices)).cpu().tolist()
                    results.values[name].update(zip(indices, values))
            advance(len(indices) + len(failed))
    return gather(results, ranks)


def gather(results: Results, ranks: Ranks) -> Results:
    """All ranks' results on rank 0 (other ranks get theirs back unchanged)."""
    if ranks.world == 1:
        return results
    import torch.distributed as dist

    parts: list[Results | None] = [None] * ranks.world
    dist.all_gather_object(parts, results)
    merged = Results({name: {} for name in results.values})
    for part in parts:
        assert part is not None
        merged.failed.update(part.failed)
        for name, values in part.values.items():
            merged.values[name].update(values)
    return merged
