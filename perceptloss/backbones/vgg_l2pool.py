"""VGG16 with L2 pooling in place of max-pooling: the trunk of DISTS (Ding et al., TPAMI 2020).

DISTS replaces each of VGG16's 2x2 max-pools by an anti-aliased "L2 pooling": ``sqrt(g * x**2 + 1e-12)`` with g
the normalised 3x3 Hanning window (``np.hanning(5)[1:-1]`` = (0.5, 1, 0.5), outer product, divided by its sum),
applied per channel (depthwise) with stride 2 and padding 1. The convolutions keep torchvision's VGG16
configuration and its ``features.N.*`` parameter names, so torchvision's ``vgg16-397923af.pth`` loads as it is
(the pools have no parameters; their window is a constant).

Registered as the backbone ``vgg16_l2pool`` (its weights: VGG16's catalogued entries, ``vgg16.torchvision``: the
same file).
Layer names are VGG16's Caffe-style names (``conv1_1``, ``relu1_1``, ..., ``pool1`` now an L2 pool, ...);
DISTS taps relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg as tv_vgg

from .. import _ops
from .._dtypes import functorch_transform_active
from ..registry import BackboneSpec, register_backbone
from .sequential import SequentialFeatures
from .vgg import VGG_CONFIGS, vgg_layer_names  # importing .vgg registers vgg16, whose weight entry is reused

#: The layers DISTS compares (after the image itself, its "layer 0").
DISTS_LAYERS: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def hanning_window(size: int = 5) -> torch.Tensor:
    """The (size-2, size-2) normalised 2-D Hanning window of DISTS' L2 pooling (float64, sums to 1)."""
    n = torch.arange(size, dtype=torch.float64, device="cpu")  # a constant, also while a model is built on "meta"
    a = 0.5 - 0.5 * torch.cos(2 * torch.pi * n / (size - 1))  # numpy's np.hanning(size)
    a = a[1:-1]
    g = a[:, None] * a[None, :]
    return g / g.sum()


class L2Pool2d(nn.Module):
    """DISTS' L2 pooling: (N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2)), ``sqrt(conv(x**2, g) + 1e-12)``.

    Depthwise, stride 2, padding 1, the 3x3 window of ``hanning_window(5)``. The window is a constant, not a
    buffer (it is no weight: state dicts and weight files never hold it); it is cast to the input's device and
    dtype at each call (9 numbers).

    Without gradient on the CPU the fused operator's ``l2_pool3x3`` kernel computes the same in one pass (squares
    and sums in float32, float64 for float64). 16-bit inputs (``dtype=`` or autocast) are pooled in float32,
    autocast off, and the result cast back: the
    pooling is a sum of squares (accumulated in float32 like every statistic of the library), and its
    ``+ 1e-12`` is 0 in float16, so that an all-zero window (common after a ReLU) would have the gradient
    sqrt'(0) = inf, and inf * 0 = NaN. In float32 that slope is at most 5e5 and multiplies a zero: finite.
    """

    def __init__(self, channels: int, filter_size: int = 5, stride: int = 2) -> None:
        super().__init__()
        self.channels = int(channels)
        self.stride = int(stride)
        self.padding = (filter_size - 2) // 2
        self.window = hanning_window(filter_size).float()  # float32, as the official code's filter
        self._window_values = [float(v) for v in self.window.flatten()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel_applies(x):  # the same sums in one pass, without the float32 copy and its square
            return torch.ops.perceptloss.l2_pool3x3(x, self._window_values)
        wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            g = self.window.to(device=x.device, dtype=wide.dtype).expand(x.shape[1], 1, *self.window.shape)
            out = F.conv2d(wide.square(), g, stride=self.stride, padding=self.padding, groups=x.shape[1])
            pooled = (out + 1e-12).sqrt()
        return pooled.to(x.dtype)

    def _kernel_applies(self, x: torch.Tensor) -> bool:
        """The operator's CPU kernel (forward only) runs where no gradient is wanted and nothing traces."""
        return (x.device.type == "cpu" and x.dim() == 4 and _ops.has_l2_pool_kernel() and self.stride == 2
                and tuple(self.window.shape) == (3, 3) and not (torch.is_grad_enabled() and x.requires_grad)
                and not torch.compiler.is_compiling() and not functorch_transform_active())

    def output_size(self, size: int) -> int:
        """The output length along H or W for an input of length ``size`` (<= 0: no output)."""
        window = int(self.window.shape[-1])
        return (size + 2 * self.padding - window) // self.stride + 1 if size + 2 * self.padding >= window else 0

    def extra_repr(self) -> str:
        return f"channels={self.channels}, stride={self.stride}, padding={self.padding}"


def vgg_l2pool_modules(arch: str = "vgg16") -> list[nn.Module]:
    """torchvision's VGG ``features`` modules for ``arch`` with every MaxPool2d replaced by an L2Pool2d."""
    modules: list[nn.Module] = []
    channels = 3
    for m in tv_vgg.make_layers(tv_vgg.cfgs[VGG_CONFIGS[arch]]):
        if isinstance(m, nn.Conv2d):
            channels = m.out_channels
        modules.append(L2Pool2d(channels) if isinstance(m, nn.MaxPool2d) else m)
    return modules


class VGGL2PoolFeatures(SequentialFeatures):
    """VGG16 (or another depth) with L2 pooling, truncated after the deepest of ``layers``.

    Input (N, 3, H, W) ImageNet-normalised; returns the activations of ``layers`` in order. Parameters are
    named ``features.N.*`` as in torchvision (``load_trunk_state_dict`` loads torchvision's checkpoint).
    """

    def __init__(self, layers: tuple[str, ...] = DISTS_LAYERS, arch: str = "vgg16") -> None:
        super().__init__(vgg_l2pool_modules(arch), vgg_layer_names(arch), tuple(layers))
        self.arch = arch


def _register() -> None:
    """Register ``vgg16_l2pool`` (DISTS' trunk) with VGG16's entries (the same file: vgg16-397923af.pth)."""
    register_backbone(
        BackboneSpec(
            name="vgg16_l2pool",
            layers=vgg_layer_names("vgg16"),
            build=lambda layers: VGGL2PoolFeatures(layers, "vgg16"),
            load=lambda extractor, state: extractor.load_trunk_state_dict(state),
            weights_from="vgg16",
            description="VGG16 with L2 pooling in place of max-pooling (DISTS' trunk), Caffe-style layer names",
        ),
        overwrite=True,
    )


_register()
