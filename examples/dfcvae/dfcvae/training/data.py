"""The run's training faces (decoded once into the face cache) and the batches each process takes from them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..celeba import CelebAError, build_cache, cache_key, load_celeba, to_float
from ..distributed import Distributed
from .config import TrainConfig
from .errors import SetupError

#: The side of the faces the VAE is trained on.
SIZE = 64


@dataclass(frozen=True)
class Faces:
    """The decoded training faces, (N, 64, 64, 3) uint8 (memory-mapped), and what the run records about them."""

    images: np.ndarray
    #: The face cache's key (image list, crop and size): a resumed run must train on the same faces.
    key: str
    steps_per_epoch: int

    def record(self) -> dict[str, Any]:
        """The data entries of the run's config (config.json and checkpoints)."""
        return dict(data_key=self.key, images=len(self.images), steps_per_epoch=self.steps_per_epoch)


def load_data(config: TrainConfig, dist: Distributed) -> Faces:
    """The official train split of --data (its first --subset images), decoded (SetupError for unusable data)."""
    try:
        data = load_celeba(config.data, verbose=dist.main).split("train")
        if len(data) == 0:
            raise CelebAError(f"{config.data} has no images of the official train split")
        if config.subset:
            data = data.select(range(min(config.subset, len(data))))
        # Every rank asks for the cache: the first decodes it under a file lock, the others wait on the lock (no
        # collective is pending meanwhile, so no process-group timeout) and then read the finished file.
        cache = build_cache(data, config.crop, SIZE, config.cache_dir, config.workers,
                            progress=dist.main and config.progress)
    except CelebAError as e:
        raise SetupError(str(e)) from None
    n = len(cache.images)
    per_step = config.batch_size * dist.world
    if n // per_step == 0:
        raise SetupError(f"{n} images are fewer than one batch of {per_step}; lower --batch-size")
    return Faces(cache.images, cache_key(data.files, config.crop, SIZE), n // per_step)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` faces in ``epoch``: the same on every process and after a resume."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).numpy()


def batch(faces: Faces, order: np.ndarray, it: int, config: TrainConfig, dist: Distributed) -> torch.Tensor:
    """This process's share of the ``it``-th step of an epoch in ``order``: (B, 3, 64, 64) float on the device."""
    lo = (it * dist.world + dist.rank) * config.batch_size
    images = torch.from_numpy(faces.images[np.sort(order[lo:lo + config.batch_size])])
    if config.device.type == "cuda":
        images = images.pin_memory()
    x = to_float(images.to(config.device, non_blocking=True))
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
