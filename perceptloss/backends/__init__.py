"""``perceptloss.backends``: where the fused operator runs, and its CPU side's settings (as ``torch.backends``).

- :func:`has_kernel`: whether the fused operator has a kernel for a device type ('cpu', 'cuda').
- ``perceptloss.backends.cpu``: the CPU kernels' instruction level, gradient-memory cache and streaming.

None of it is needed to use the losses. The environment variables that change these settings are in the one
table of ``PERCEPTLOSS_*`` variables (``perceptloss._env``).

>>> import perceptloss
>>> on_cuda = perceptloss.backends.has_kernel("cuda")
"""
from .._ops import has_kernel
from . import cpu

__all__ = ["has_kernel", "cpu"]
