"""One pass over the image pairs for all metrics, optionally sharded over torchrun ranks.

Under ``torchrun`` (WORLD_SIZE > 1) the process group is set up here (gloo on the CPU, NCCL on CUDA); rank r
scores batches r, r + K, r + 2K, ... of the same batch list a single process would use, and rank 0 gathers
every value: per-image values and the summary are those of one process.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field
from datetime import timedelta

import torch

from .._sizes import ImageTooSmallError
from .batching import Plan, load_batches
from .errors import ScoreError


#: How long a rank of a torchrun job waits for the others to join (rank 0 hosts the rendezvous at MASTER_ADDR:
#: MASTER_PORT): one missing after this is an error naming it, not a hang.
RENDEZVOUS_TIMEOUT = timedelta(minutes=5)
#: How long a rank that has scored its share waits for the slowest one in the final gather.
GATHER_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 without one); ``group``: the process group the
    results are gathered over (None outside a job)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: object = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ScoreError(f"the environment variable {name}={value!r} is not an integer; torchrun sets it (unset it "
                         "to score in one process)") from None


def ranks_from_env() -> Ranks:
    """This process's rank from the environment torchrun sets (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT), checked, without joining the job; rank 0 of 1 when WORLD_SIZE is unset or 1."""
    world = _env_int("WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ScoreError(
            f"WORLD_SIZE={world} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: a "
            f"sharded run is started by torchrun, which sets them all (torchrun --nproc_per_node {world} -m "
            f"perceptloss score ...); to score in this one process, unset WORLD_SIZE"
        )
    rank = _env_int("RANK", os.environ["RANK"])
    if not 0 <= rank < world:
        raise ScoreError(f"RANK={rank} is not a rank of WORLD_SIZE={world} (0 to {world - 1}); start the job with "
                         f"torchrun --nproc_per_node {world} -m perceptloss score ...")
    return Ranks(rank, world, _env_int("LOCAL_RANK", os.environ.get("LOCAL_RANK", "0")))


def start_ranks(device: str, ranks: Ranks | None = None) -> Ranks:
    """Join the torchrun job described by the environment (gloo for the CPU, NCCL for CUDA), if any.

    Every rank must join within :data:`RENDEZVOUS_TIMEOUT` (a job started without rank 0, or with a rank
    missing, is a ScoreError saying so, not a hang)."""
    ranks = ranks_from_env() if ranks is None else ranks
    if ranks.world <= 1:
        return ranks
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(ranks.local_rank)
        try:
            dist.init_process_group(backend=backend, timeout=RENDEZVOUS_TIMEOUT)
        except (RuntimeError, ValueError) as e:  # DistStoreError / DistNetworkError: a rank did not come
            where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
            reason = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
            raise ScoreError(
                f"rank {ranks.rank} of {ranks.world} could not join the job at {where} within "
                f"{RENDEZVOUS_TIMEOUT.total_seconds():g} s ({reason}): every rank 0 to {ranks.world - 1} must be "
                f"running, rank 0 hosting the rendezvous; start them all with torchrun --nproc_per_node "
                f"{ranks.world} -m perceptloss score ..."
            ) from None
    return Ranks(ranks.rank, ranks.world, ranks.local_rank, dist.new_group(timeout=GATHER_TIMEOUT))


def stop_ranks(ranks: Ranks) -> None:
    if ranks.world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


#: Device types that ``--device`` takes besides the CPU (where available), with their names in messages.
ACCELERATORS = {"cuda": "CUDA", "mps": "MPS", "xpu": "XPU"}


def check_device(device: str) -> torch.device:
    """``--device`` as a torch.device, or a ScoreError (one line, what to pass) for a device that cannot score
    here: not a device name, an accelerator not available (or an index beyond its devices), or a device type
    that holds no values (``meta``) or that perceptloss does not compute on."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ScoreError(f"--device must be a torch device such as cpu, cuda or cuda:1, got {device!r}") from None
    if dev.type == "cpu":
        return dev
    if dev.type not in ACCELERATORS:
        what = "meta tensors hold no values" if dev.type == "meta" else f"perceptloss does not compute on {dev.type}"
        raise ScoreError(f"--device {device}: {what}; use --device cpu, or cuda / cuda:N (mps, xpu where available)")
    name = ACCELERATORS[dev.type]
    backend = getattr(torch, dev.type, None)
    if dev.type == "mps":
        available = torch.backends.mps.is_available()
    else:
        available = backend is not None and backend.is_available()
    if not available:
        raise ScoreError(f"--device {device}: {name} is not available here; use --device cpu")
    count = backend.device_count() if backend is not None and hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise ScoreError(f"--device {device}: this machine has {count} {name} device(s), {dev.type}:0 to "
                         f"{dev.type}:{count - 1}")
    return dev


def rank_device(device: str, ranks: Ranks) -> torch.device:
    """``--device`` for this rank (checked): plain "cuda" becomes cuda:<local rank> under torchrun."""
    dev = check_device(device)
    if device == "cuda" and ranks.world > 1:
        return torch.device("cuda", ranks.local_rank)
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
    """{metric: {plan index: value}}, {plan index: decode error} and {plan index: why the images are too small
    for a metric} (all ranks' after ``gather``)."""

    values: dict[str, dict[int, float]]
    failed: dict[int, str] = field(default_factory=dict)
    too_small: dict[int, str] = field(default_factory=dict)


class Progress:
    """A progress bar advanced by n pairs (tqdm when installed, else a line every 10% on stderr, or nothing);
    ``close()`` takes it off the screen (also when the run stops early: Ctrl-C, an error)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.shown, self.bar = total, 0, -1, None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, unit="pair", file=sys.stderr, leave=False)

    def __call__(self, n: int) -> None:
        if not self.enabled:
            return
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if self.done >= self.total:
                self.close()
            return
        tenth = self.done * 10 // max(self.total, 1)
        if tenth != self.shown:
            self.shown = tenth
            print(f"scored {self.done}/{self.total} pairs", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def score_batches(plan: Plan, batches: list[list[int]], metrics: dict[str, torch.nn.Module], device: torch.device, *,
                  workers: int, ranks: Ranks, progress: bool) -> Results:
    """Score this rank's share of ``batches`` with every metric (one decode per pair for all of them).

    A batch holds images of one size: when they are too small for a metric (``ImageTooSmallError``), its pairs
    are skipped for every metric and recorded in ``Results.too_small``, like unreadable files."""
    mine = batches[ranks.rank::ranks.world]
    results = Results({name: {} for name in metrics})
    advance = Progress(sum(len(b) for b in mine), progress and ranks.is_main)  # rank 0's share
    with torch.inference_mode(), contextlib.closing(advance):
        for indices, ref, dist, failed in load_batches(plan, mine, workers):
            results.failed.update(failed)
            if indices:
                ref, dist = ref.to(device), dist.to(device)
                scored = {}
                for name, loss in metrics.items():
                    try:
                        scored[name] = loss(dist, ref).detach().float().reshape(len(indices)).cpu().tolist()
                    except ImageTooSmallError as e:
                        for i in indices:
                            results.too_small[i] = _too_small(plan.items[i].pair.key, name, e)
                        break
                else:
                    for name, values in scored.items():
                        results.values[name].update(zip(indices, values))
            advance(len(indices) + len(failed))
    return gather(results, ranks)


def _too_small(key: str, metric: str, error: ImageTooSmallError) -> str:
    """One line: pair ``key`` is too small for ``metric`` (its size and the smallest the metric takes)."""
    (h, w), need = error.size, error.min_size
    if need is None:
        return f"pair {key!r} ({w}x{h}) is too small for metric {metric}: {' '.join(str(error).split())}"
    return f"pair {key!r} ({w}x{h}) is too small for metric {metric}, which takes at least {need[1]}x{need[0]}"


def gather(results: Results, ranks: Ranks) -> Results:
    """All ranks' results on rank 0 (other ranks get theirs back unchanged)."""
    if ranks.world == 1:
        return results
    import torch.distributed as dist

    parts: list[Results | None] = [None] * ranks.world
    dist.all_gather_object(parts, results, group=ranks.group)
    merged = Results({name: {} for name in results.values})
    for part in parts:
        assert part is not None
        merged.failed.update(part.failed)
        merged.too_small.update(part.too_small)
        for name, values in part.values.items():
            merged.values[name].update(values)
    return merged
