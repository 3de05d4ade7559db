"""``python -m perceptloss score REF DIST --metric NAME ...``: perceptual metrics of two image folders.

One job per module: ``pairing`` (which files belong together), ``decoding`` (files to RGB [0, 1] tensors, the
stated policy for grey / RGBA / palette / 16-bit images), ``metrics`` (metric names to losses), ``batching``
(same-size batches decoded in DataLoader worker processes), ``running`` (one pass over the images for all
metrics, sharded over torchrun ranks), ``statistics`` (mean, std, the 95% t-interval), ``output`` (CSV, JSON,
the summary on screen) and ``cli`` (the subcommand's arguments).
"""
from .errors import ScoreError

__all__ = ["ScoreError"]
