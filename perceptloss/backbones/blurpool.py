"""Anti-aliased ("BlurPool") AlexNet and VGG16 trunks: the shift-tolerant trunks of ST-LPIPS (Ghildyal & Liu, ECCV 2022).

Every subsampling of the network is a BlurPool (Zhang, *Making Convolutional Networks Shift-Invariant Again*,
ICML 2019): blur with the normalised 3x3 binomial filter ([1, 2, 1] outer [1, 2, 1] / 16, per channel), then
keep every second sample. ST-LPIPS' "shift_tolerant" variant reflection-pads the input of each BlurPool by 2
pixels on every side (the ``stlpips-pytorch`` package's ``Downsample(pad_more=True)``), and:

- AlexNet (``alexnet_shift_tolerant``): conv1 runs with stride 1 and a BlurPool after it, before its ReLU;
  each 3x3/2 max-pool becomes a 3x3/1 max-pool and a BlurPool;
- VGG16 (``vgg16_shift_tolerant``): each 2x2/2 max-pool becomes a 2x2/1 max-pool and a BlurPool.

Layer names are Caffe-style as in ``alexnet`` and ``vgg16``, each BlurPool named after the layer whose stride it
carries (``conv1_down``, ``pool1_down``, ...); ST-LPIPS taps relu1 ... relu5 (AlexNet) and relu1_2 ... relu5_3
(VGG16). Parameters are named ``features.N.*`` with N the module's index in the package's ``features``, so
the converted weights are the package's tensors under its own indices. The blur filter is a constant, not a
weight.

The trained weights ship (BSD-2) inside the ``stlpips-pytorch`` 0.0.2 wheel as
``stlpips_pytorch/weights/vST0.0/{alex,vgg}_shift_tolerant.pth``, one file per network holding the trunk and
ST-LPIPS' heads; they are located through ``importlib.metadata`` (the package's code is never imported),
checked against their sha256 and cached as safetensors: the entries ``alexnet_shift_tolerant.stlpips`` and
``vgg16_shift_tolerant.stlpips``. Their preprocessing is LPIPS' scaling layer (ST-LPIPS is LPIPS v0.1's).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import vgg as tv_vgg

from ..lpips_heads import LPIPS_NORMALIZATION
from ..registry import BackboneSpec, register_backbone
from ..weights import StateDict, WeightEntry, load_state_dict_file, package_file, register_weights
from .sequential import SequentialFeatures
from .vgg import vgg_layer_names

#: The binomial coefficients of each blur size the package offers (``filt_size`` 1 ... 7).
_BINOMIAL = {1: (1,), 2: (1, 1), 3: (1, 2, 1), 4: (1, 3, 3, 1), 5: (1, 4, 6, 4, 1), 6: (1, 5, 10, 10, 5, 1),
             7: (1, 6, 15, 20, 15, 6, 1)}


def binomial_window(size: int = 3) -> torch.Tensor:
    """The (size, size) normalised 2-D binomial blur filter (float64, sums to 1): (1, 2, 1) outer (1, 2, 1) / 16."""
    if size not in _BINOMIAL:
        raise ValueError(f"a binomial blur has 1 to 7 taps, got {size}")
    a = torch.tensor(_BINOMIAL[size], dtype=torch.float64)
    g = a[:, None] * a[None, :]
    return g / g.sum()


class BlurPool2d(nn.Module):
    """Anti-aliased subsampling: (N, C, H, W) -> (N, C, (H + 2p - k) // s + 1, (W + 2p - k) // s + 1).

    Reflection padding of ``padding`` pixels on each side (which needs H, W > ``padding``), then the depthwise
    k x k binomial blur (``binomial_window``) with stride ``stride``: the package's
    ``Downsample(filt_size=k, stride=s, pad_more=True)`` for ``padding = k - 1``. The filter is a constant (no
    weight: state dicts and weight files never hold it), cast to the input's device and dtype at each call.
    """

    def __init__(self, channels: int, filter_size: int = 3, stride: int = 2, padding: int | None = None) -> None:
        super().__init__()
        self.channels = int(channels)
        self.stride = int(stride)
        self.padding = int(filter_size - 1 if padding is None else padding)
        self.window = binomial_window(filter_size).float()  # float32, as the package's filter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        padded = F.pad(x, (p, p, p, p), mode="reflect") if p else x
        g = self.window.to(device=x.device, dtype=x.dtype).expand(x.shape[1], 1, *self.window.shape)
        return F.conv2d(padded, g, stride=self.stride, groups=x.shape[1])

    def output_size(self, size: int) -> int:
        """The output length along H or W for an input of length ``size`` (<= 0: no output)."""
        if size <= self.padding:  # reflection padding reads ``padding`` pixels past the border
            return 0
        window = int(self.window.shape[-1])
        return (size + 2 * self.padding - window) // self.stride + 1

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, filter_size={int(self.window.shape[-1])}, stride={self.stride}, "
                f"padding={self.padding} (reflect)")


# ----------------------------------------------------------------------------------------------- AlexNet

#: One name per module of ST-LPIPS' shift-tolerant AlexNet ``features``.
ALEXNET_ST_LAYERS: tuple[str, ...] = (
    "conv1", "conv1_down", "relu1", "pool1", "pool1_down",
    "conv2", "relu2", "pool2", "pool2_down",
    "conv3", "relu3",
    "conv4", "relu4",
    "conv5", "relu5", "pool5", "pool5_down",
)


def alexnet_st_modules() -> list[nn.Module]:
    """The modules of the shift-tolerant AlexNet, in order (one per name of ``ALEXNET_ST_LAYERS``)."""
    return [
        nn.Conv2d(3, 64, kernel_size=11, stride=1, padding=2), BlurPool2d(64), nn.ReLU(), nn.MaxPool2d(3, 1),
        BlurPool2d(64),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 1), BlurPool2d(192),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 1), BlurPool2d(256),
    ]


class AlexNetShiftTolerantFeatures(SequentialFeatures):
    """ST-LPIPS' shift-tolerant AlexNet truncated after the deepest of ``layers`` (``features.N.*`` naming).

    Input (N, 3, H, W) normalised with LPIPS' scaling layer; H, W >= 16 for relu5 (conv1 is 11x11 at stride 1).
    """

    def __init__(self, layers: tuple[str, ...]) -> None:
        super().__init__(alexnet_st_modules(), ALEXNET_ST_LAYERS, layers)


# ------------------------------------------------------------------------------------------------- VGG16


def vgg16_st_layer_names() -> tuple[str, ...]:
    """VGG16's Caffe-style names with ``poolK_down`` (the BlurPool) after each ``poolK`` (now stride 1)."""
    names: list[str] = []
    for name in vgg_layer_names("vgg16"):
        names += [name, f"{name}_down"] if name.startswith("pool") else [name]
    return tuple(names)


VGG16_ST_LAYERS = vgg16_st_layer_names()


def vgg16_st_modules(depth: int | None = None) -> list[nn.Module]:
    """The first ``depth`` modules (all: None) of the shift-tolerant VGG16, in order (each convolution's random
    initialisation costs time, and loaded weights replace it)."""
    modules: list[nn.Module] = []
    channels = 3
    for v in tv_vgg.cfgs["D"]:
        if depth is not None and len(modules) >= depth:
            break
        if v == "M":
            modules += [nn.MaxPool2d(kernel_size=2, stride=1), BlurPool2d(channels)]
        else:
            modules += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(v)
    return modules if depth is None else modules[:depth]


class VGG16ShiftTolerantFeatures(SequentialFeatures):
    """ST-LPIPS' shift-tolerant VGG16 truncated after the deepest of ``layers`` (``features.N.*`` naming).

    Input (N, 3, H, W) normalised with LPIPS' scaling layer.
    """

    def __init__(self, layers: tuple[str, ...]) -> None:
        depth = max(VGG16_ST_LAYERS.index(n) for n in layers) + 1
        super().__init__(vgg16_st_modules(depth), VGG16_ST_LAYERS, layers)


# ------------------------------------------------------------------------------------- weights, registration

#: sha256 of the package's weight files (stlpips-pytorch 0.0.2): trunk and heads in one file per network.
STLPIPS_FILE_SHA256 = {
    "alex": "b356b382f96010f77d085ee8343ecd9fd322d0a56e8de2b2d0549fafcad8b9ee",
    "vgg": "44597da68f49c1837c100ff52299050f274d102eb102e5837178c79be6f0e250",
}
#: The package's name of each network's file, and our backbone for it.
STLPIPS_FILES = {net: f"{net}_shift_tolerant.pth" for net in STLPIPS_FILE_SHA256}
STLPIPS_BACKBONES = {"alex": "alexnet_shift_tolerant", "vgg": "vgg16_shift_tolerant"}
#: The hint every ST-LPIPS entry gives when its file is missing.
STLPIPS_HINT = "pip install stlpips-pytorch==0.0.2 --no-deps (its wheel ships the trained trunks and heads)"


def stlpips_file(net: str):
    """A finder for the package's weight file of ``net`` ("alex" or "vgg"), through ``importlib.metadata``."""
    return package_file("stlpips-pytorch", f"stlpips_pytorch/weights/vST0.0/{STLPIPS_FILES[net]}")


def convert_stlpips_trunk(path: Path) -> StateDict:
    """``net.slice{k}.{N}.{weight,bias}`` of an ST-LPIPS file -> ``features.{N}.*`` float32 tensors.

    The file's blur filters (``net.slice{k}.{N}.filt``) are checked to be the binomial filter and dropped (ours
    is a constant); its heads (``lin*``) and scaling layer are not the trunk's.
    """
    state = load_state_dict_file(path)
    out: StateDict = {}
    expected = binomial_window(3).float()
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) != 4 or parts[0] != "net" or not parts[1].startswith("slice"):
            continue
        index, name = parts[2], parts[3]
        if name == "filt":
            if value.shape[1:] != (1, 3, 3) or not torch.equal(value.float(), expected.expand_as(value)):
                raise ValueError(f"{path}: {key} is not the 3x3 binomial blur filter of ST-LPIPS' trunks")
            continue
        out[f"features.{index}.{name}"] = value.detach().float().contiguous()
    if not out:
        raise ValueError(f"{path} holds no ST-LPIPS trunk (expected keys like 'net.slice1.0.weight')")
    return out


def trunk_entry(net: str) -> WeightEntry:
    """The catalogue entry ``<backbone>.stlpips`` of the trained shift-tolerant trunk of ``net``."""
    backbone = STLPIPS_BACKBONES[net]
    return WeightEntry(
        backbone=backbone,
        name="stlpips",
        description=f"ST-LPIPS' shift-tolerant {backbone.split('_')[0]} trunk (Ghildyal & Liu 2022, "
                    f"stlpips-pytorch 0.0.2, BSD-2)",
        normalization=LPIPS_NORMALIZATION,
        filename=f"{backbone}-stlpips.safetensors",
        convert=convert_stlpips_trunk,
        finders=(stlpips_file(net),),
        source_sha256=STLPIPS_FILE_SHA256[net],
        hint=STLPIPS_HINT,
        published_names=(STLPIPS_FILES[net],),
        source_keys=("net.slice1.0.weight", "net.slice1.0.bias"),
    )


def _register() -> None:
    specs = {
        "alex": (ALEXNET_ST_LAYERS, AlexNetShiftTolerantFeatures, "AlexNet"),
        "vgg": (VGG16_ST_LAYERS, VGG16ShiftTolerantFeatures, "VGG16"),
    }
    for net, (layers, build, arch) in specs.items():
        register_weights(trunk_entry(net), default=True, overwrite=True)
        register_backbone(
            BackboneSpec(
                name=STLPIPS_BACKBONES[net],
                layers=layers,
                build=build,
                load=lambda extractor, state: extractor.load_trunk_state_dict(state),
                description=f"anti-aliased (BlurPool) {arch}, ST-LPIPS' shift-tolerant trunk, Caffe-style names",
            ),
            overwrite=True,
        )


_register()
