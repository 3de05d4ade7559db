"""``perceptloss.backends``: where the fused operator runs, and its CPU side's settings (as ``torch.backends``).

- :func:`has_kernel`: whether the fused operator has a kernel for a device type ('cpu', 'cuda').
- ``perceptloss.backends.cpu``: the CPU kernels' instruction level.
- ``perceptloss.backends.probe``: the first-use check of the CUDA kernels on each device, and its results.

None of it is needed to use the losses. ``ATEN_CPU_CAPABILITY`` lowers the kernel level as it lowers ATen's.

>>> import perceptloss
>>> on_cuda = perceptloss.backends.has_kernel("cuda")
"""
from .._ops import has_kernel
from . import cpu, probe

__all__ = ["has_kernel", "cpu", "probe"]
