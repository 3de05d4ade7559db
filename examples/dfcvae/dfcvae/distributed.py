"""One process per device under torchrun: device selection, the process group, and gathering to rank 0.

Single-process runs (no ``WORLD_SIZE`` in the environment, or 1) use the same objects as no-ops. Under
``torchrun --nproc-per-node K train.py --device cuda`` each process takes ``cuda:<LOCAL_RANK>``
(``torch.cuda.set_device``), and the NCCL process group is bound to that device; on the CPU the processes use gloo.
"""
from __future__ import annotations

import inspect
import os
from typing import Any

import torch


class DeviceError(ValueError):
    """An unknown, unavailable or ambiguous --device (the message says what to pass instead)."""


def launch_env() -> tuple[int, int, int]:
    """(world size, global rank, local rank) from torchrun's environment; (1, 0, 0) outside torchrun."""
    return (int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str | None, local_rank: int = 0, world: int = 1) -> torch.device:
    """The torch device of this process for ``--device name`` (None: CUDA when available, else the CPU).

    With several processes (``world > 1``) a CUDA device is always ``cuda:<local_rank>``, one GPU per process;
    an explicit index there, a local rank without its GPU, or a missing device raise :class:`DeviceError`."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown --device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {name!r} is not supported here; use cpu, cuda or cuda:N")
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name} but no CUDA device is available; use --device cpu")
    count = torch.cuda.device_count()
    if world > 1:
        if device.index is not None:
            raise DeviceError(f"--device {name} with {world} processes would put them all on one GPU; pass "
                              "--device cuda (each process then takes cuda:<LOCAL_RANK>)")
        if local_rank >= count:
            raise DeviceError(f"LOCAL_RANK {local_rank} needs GPU {local_rank} but {count} "
                              f"{'is' if count == 1 else 'are'} visible; start at most {count} processes per node "
                              f"(torchrun --nproc-per-node {count})")
        return torch.device("cuda", local_rank)
    index = 0 if device.index is None else device.index
    if index >= count:
        raise DeviceError(f"--device {name} but only {count} CUDA device{'s are' if count != 1 else ' is'} visible; "
                          f"use cuda:0 … cuda:{count - 1}")
    return torch.device("cuda", index)


def process_device(name: str | None) -> torch.device:
    """This process's device for ``--device name``: :func:`pick_device` with torchrun's local rank and world size."""
    world, _, local_rank = launch_env()
    return pick_device(name, local_rank, world)


class Distributed:
    """The process group of a torchrun job (a no-op for single-process runs).

    ``device`` must come from :func:`pick_device` with the same local rank: a CUDA process sets it as its current
    device before the NCCL group is created, and binds the group to it where this torch supports ``device_id``."""

    def __init__(self, device: torch.device) -> None:
        self.world, self.rank, self.local_rank = launch_env()
        self.device = device
        if self.world > 1:
            if device.type == "cuda":
                torch.cuda.set_device(device)
                kwargs = {"device_id": device} if _supports_device_id() else {}
                torch.distributed.init_process_group("nccl", **kwargs)
            else:
                torch.distributed.init_process_group("gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` as a list on rank 0 (None on the others); a collective: all ranks must call it."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world if self.main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def everywhere(self, ok: torch.Tensor) -> bool:
        """Whether the 0-dim bool tensor ``ok`` holds on every rank (one all-reduce when there are several: a
        collective, all ranks must call it)."""
        if self.world == 1:
            return bool(ok)
        flag = ok.to(torch.int32).reshape(1)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag)

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _supports_device_id() -> bool:
    return "device_id" in inspect.signature(torch.distributed.init_process_group).parameters
