"""Plan the work (sizes from the file headers, the size policy per pair) and decode same-size batches in
DataLoader worker processes.

The batches depend only on the pairs, the size options and ``batch_size`` (not on the number of processes),
so a pair is computed in the same batch whatever the sharding: per-image values are the same with 1 or K ranks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from .decoding import DecodeError, center_crop, decode, image_size, resample, to_tensor
from .errors import ScoreError
from .pairing import Pair


@dataclass(frozen=True)
class Planned:
    """A pair to score: its final (H, W) and what is done to reach it (None, "resize" or "crop")."""

    pair: Pair
    size: tuple[int, int]
    action: str | None = None


@dataclass
class Plan:
    """The pairs to score (in key order), the pairs skipped as unreadable ({key: reason}) and the size options."""

    items: list[Planned]
    failed: dict[str, str]
    resize: str | None = None
    crop: str | None = None

    @property
    def resized(self) -> int:
        return sum(p.action == "resize" for p in self.items)

    @property
    def cropped(self) -> int:
        return sum(p.action == "crop" for p in self.items)


def plan_pairs(pairs: list[Pair], *, resize: str | None = None, crop: str | None = None, strict: bool = False) -> Plan:
    """Read every file's header: unreadable files are skipped (an error under ``strict``), two sizes in one pair
    are an error naming the pair unless ``resize`` (a filter name) or ``crop`` ("center") says what to do."""
    if resize is not None and crop is not None:
        raise ScoreError("pass either --resize or --crop, not both")
    items, failed, mismatched = [], {}, []
    for pair in pairs:
        try:
            ref_size, dist_size = image_size(pair.ref), image_size(pair.dist)
        except DecodeError as e:
            if strict:
                raise ScoreError(f"{e}; remove or replace the file, or drop --strict to skip the pair") from None
            failed[pair.key] = str(e)
            continue
        if ref_size == dist_size:
            items.append(Planned(pair, ref_size))
        elif resize is not None:
            items.append(Planned(pair, ref_size, "resize"))
        elif crop is not None:
            items.append(Planned(pair, (min(ref_size[0], dist_size[0]), min(ref_size[1], dist_size[1])), "crop"))
        else:
            mismatched.append((pair, ref_size, dist_size))
    if mismatched:
        pair, (rh, rw), (dh, dw) = mismatched[0]
        more = f" (and {len(mismatched) - 1} more pair(s))" if len(mismatched) > 1 else ""
        raise ScoreError(
            f"the images of pair {pair.key!r} have different sizes: {pair.ref} is {rw}x{rh}, {pair.dist} is "
            f"{dw}x{dh}{more}; pass --resize bicubic (the distorted image resampled to the reference's size; "
            f"filters: nearest, box, bilinear, hamming, bicubic, lanczos) or --crop center (both cropped to the "
            f"common size)"
        )
    return Plan(items, failed, resize, crop)


#: ``--batch-size auto``: pairs per batch for one image size, this many pixels per image side (16 pairs at 64x64,
#: 4 at 128x128, 1 from 182x182 on), within [1, AUTO_BATCH_MAX]. Large batches of large images leave the caches:
#: LPIPS-vgg without gradient on a 2-core Sapphire Rapids, pairs/s at batch 1 / 2 / 8 / 16: 64x64 bf16 63 / 109 /
#: 172 / 160, float32 31 / 40 / 54 / 52; 256x256 bf16 12.7 / 10.6 / 7.9 / 7.6, float32 3.5 / 3.1 / 2.9 / 3.0;
#: LPIPS-alex, whose activations are far smaller, at 64x64 bf16 1,615 pairs/s in batches of 8 and 2,331 in 16
#: (benchmarks/README.md). One budget for every metric: the pixels of one 256x256 pair.
AUTO_BATCH_PIXELS = 65536
AUTO_BATCH_MAX = 64


def auto_batch_size(size: tuple[int, int]) -> int:
    """Pairs per batch for images of ``size`` (H, W) under ``--batch-size auto``."""
    return max(1, min(AUTO_BATCH_MAX, AUTO_BATCH_PIXELS // max(1, size[0] * size[1])))


def make_batches(plan: Plan, batch_size: int | str) -> list[list[int]]:
    """Indices into ``plan.items`` grouped by size (sizes in order of first appearance), at most ``batch_size`` each
    (``"auto"``: :func:`auto_batch_size` of the group's size)."""
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ScoreError(f"--batch-size must be 'auto' or an integer >= 1, got {batch_size!r}")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, item in enumerate(plan.items):
        groups.setdefault(item.size, []).append(i)
    batches = []
    for size, idx in groups.items():
        n = auto_batch_size(size) if batch_size == "auto" else batch_size
        batches += [idx[k:k + n] for k in range(0, len(idx), n)]
    return batches


class PairImages(torch.utils.data.Dataset):
    """Item i of a plan: (i, ref (3, H, W), dist (3, H, W)) float32 in [0, 1], or (i, error message)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan.items)

    def __getitem__(self, i: int):
        item = self.plan.items[i]
        try:
            ref, dist = decode(item.pair.ref), decode(item.pair.dist)
        except DecodeError as e:
            return i, str(e)
        if item.action == "resize":
            dist = resample(dist, item.size, self.plan.resize)
        elif item.action == "crop":
            ref, dist = center_crop(ref, item.size), center_crop(dist, item.size)
        return i, to_tensor(ref), to_tensor(dist)


def _collate(items):
    good = [it for it in items if len(it) == 3]
    failed = {it[0]: it[1] for it in items if len(it) == 2}
    if not good:
        return [], None, None, failed
    return [it[0] for it in good], torch.stack([it[1] for it in good]), torch.stack([it[2] for it in good]), failed


def load_batches(plan: Plan, batches: list[list[int]], workers: int) -> Iterator[tuple[list[int], torch.Tensor | None, torch.Tensor | None, dict[int, str]]]:
    """(indices, ref (B, 3, H, W), dist (B, 3, H, W), {index: decode error}) per batch, decoded by ``workers``
    DataLoader worker processes (0: in this process), in the order of ``batches``."""
    if isinstance(workers, bool) or int(workers) != workers or workers < 0:
        raise ScoreError(f"--workers must be an integer >= 0 (0 decodes in the main process), got {workers!r}")
    loader = torch.utils.data.DataLoader(
        PairImages(plan), batch_sampler=batches, num_workers=int(workers), collate_fn=_collate,
        persistent_workers=False,
    )
    yield from loader
