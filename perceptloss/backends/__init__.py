"""``perceptloss.backends``: where the fused operator runs, and its CPU side's settings (as ``torch.backends``).

- :func:`has_kernel`: whether the fused operator has a kernel for a device type ('cpu', 'cuda').
- ``perceptloss.backends.cpu``: the CPU kernels' instruction level.

None of it is needed to use the losses. ``ATEN_CPU_CAPABILITY`` lowers the kernel level as it lowers ATen's.

>>> import perceptloss
>>> on_cuda = perceptloss.backends.has_kernel("cuda")
"""
from .._ops import has_kernel
from . import cpu

__all__ = ["has_kernel", "cpu"]
