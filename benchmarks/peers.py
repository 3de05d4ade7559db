"""Perceptual losses of peer libraries, built offline with random trunk weights, for timing against ours.

Every builder takes a device and returns ``loss(x, y) -> scalar`` (mean over the batch) for images
``x, y`` of shape (N, 3, H, W) in [0, 1]. The loss values are meaningless (the ImageNet trunks are
randomly initialised, and piq's LPIPS heads are random), but the cost is the same as with the
trained weights: the architecture, layers and operations are exactly the peer's own, only the
numbers in the weight tensors differ. All parameters are frozen, so a backward pass computes the
input gradient only, and the modules are in eval mode (no dropout).

How each one is built without downloading anything:

- lpips: ``lpips.LPIPS(net="vgg", pnet_rand=True)`` builds the VGG16 trunk with
  ``torchvision.models.vgg16(pretrained=False)``; its linear heads are read from
  ``lpips/weights/v0.1/vgg.pth`` inside the wheel, so they are the trained ones.
- piq: ``piq.LPIPS()`` and ``piq.ContentLoss("vgg19")`` call torchvision's ``vgg16/vgg19(pretrained=True)``
  and (LPIPS) ``torch.hub.load_state_dict_from_url`` for the heads. We run their own constructors with
  those two names patched, for the duration of the constructor only: the VGG comes from
  ``weights=None`` and the heads are random positive (1, C, 1, 1) tensors, the shape piq multiplies
  the per-channel distances with.
- torchmetrics: ``LearnedPerceptualImagePatchSimilarity`` builds ``_NoTrainLpips(net=...)``, which
  has a ``pnet_rand`` argument that the metric does not expose; we patch the name in
  ``torchmetrics.image.lpip`` with ``partial(_NoTrainLpips, pnet_rand=True)`` during the constructor.
  Its linear heads come from ``lpips_models/vgg.pth`` inside the wheel (trained ones).

Each build runs under ``no_downloads()``, which makes ``torch.hub.download_url_to_file`` raise, so a
peer version that starts fetching weights fails loudly with the URL instead of going online. (Not
covered: importing ``torchmetrics.image.lpip`` with ``SKIP_SLOW_DOCTEST`` set in the environment starts
a child process that tries to download the pretrained LPIPS at import time; leave that variable unset.)
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import warnings
from typing import Callable, Iterator, TypeVar, Union
from unittest import mock

import torch
from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor], Tensor]
Device = Union[str, torch.device]
M = TypeVar("M", bound=nn.Module)


def installed_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """Any download through torch.hub (which torchvision's weight loading also uses) raises."""
    def refuse(url: str, *args: object, **kwargs: object) -> None:
        raise RuntimeError(f"peer tried to download {url}; it must be built offline")

    with mock.patch.object(torch.hub, "download_url_to_file", refuse), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated" and the like
        yield


def _frozen(module: M, device: Device) -> M:
    return module.to(device).eval().requires_grad_(False)


def _random_vgg(name: str) -> Callable[..., nn.Module]:
    """Stands in for torchvision.models.vgg16/vgg19 as piq calls them (pretrained=True, progress=False)."""
    import torchvision

    return lambda *args, **kwargs: getattr(torchvision.models, name)(weights=None)


def build_lpips(device: Device) -> LossFn:
    """lpips.LPIPS(vgg): VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3; unit-normalised channels,
    squared difference, learned 1x1 linear head per layer, spatial mean, sum over layers."""
    import lpips

    with no_downloads():
        net = _frozen(lpips.LPIPS(net="vgg", pnet_rand=True, pretrained=True, verbose=False), device)
    return lambda x, y: net(x, y, normalize=True).mean()  # normalize=True: maps [0, 1] to [-1, 1]


def build_piq_lpips(device: Device) -> LossFn:
    """piq.LPIPS: VGG16 relu1_2 ... relu5_3 (all 31 modules of features run), ImageNet normalisation,
    unit-normalised channels, squared difference weighted per channel, spatial mean, sum."""
    import piq
    import piq.perceptual

    def random_heads(url: str, *args: object, **kwargs: object) -> list[Tensor]:
        assert url == piq.LPIPS._weights_url, url  # the only thing piq.LPIPS fetches this way
        return [torch.rand(1, c, 1, 1) for c in (64, 128, 256, 512, 512)]

    with no_downloads(), mock.patch.object(piq.perceptual, "vgg16", _random_vgg("vgg16")), \
            mock.patch.object(torch.hub, "load_state_dict_from_url", random_heads):
        loss = _frozen(piq.LPIPS(reduction="mean"), device)
    return loss  # expects [0, 1]; the per-channel weights are plain tensors, moved to x's device per call


def build_piq_content(device: Device) -> LossFn:
    """piq.ContentLoss: VGG19 relu1_1 ... relu5_1 (our layers; all 37 modules of features run),
    ImageNet normalisation, per-layer MSE (mean over space, sum over channels and layers)."""
    import piq
    import piq.perceptual

    layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    with no_downloads(), mock.patch.object(piq.perceptual, "vgg19", _random_vgg("vgg19")):
        loss = piq.ContentLoss("vgg19", layers=layers, weights=[1.0] * len(layers), reduction="mean")
    return _frozen(loss, device)  # expects [0, 1]


def build_torchmetrics(device: Device) -> LossFn:
    """torchmetrics LPIPS(vgg): its bundled copy of lpips (same computation as build_lpips), called
    through Metric.forward, which also checks the input range (a device sync) and keeps a state."""
    from torchmetrics.image import lpip

    random_trunk = functools.partial(lpip._NoTrainLpips, pnet_rand=True)
    with no_downloads(), mock.patch.object(lpip, "_NoTrainLpips", random_trunk):
        metric = lpip.LearnedPerceptualImagePatchSimilarity(net_type="vgg", reduction="mean", normalize=True)
    metric = _frozen(metric, device)

    def loss(x: Tensor, y: Tensor) -> Tensor:
        value = metric(x, y)
        metric.reset()  # forward appends each batch's scores (graph attached) to the metric's state
        return value

    return loss


#: key -> (label with the installed version, builder).
PEERS: dict[str, tuple[str, Callable[[Device], LossFn]]] = {
    "lpips": (f"lpips {installed_version('lpips')} LPIPS(vgg)", build_lpips),
    "piq-lpips": (f"piq {installed_version('piq')} LPIPS(vgg16)", build_piq_lpips),
    "piq-content": (f"piq {installed_version('piq')} ContentLoss(vgg19, relu1_1..relu5_1)", build_piq_content),
    "torchmetrics-lpips": (f"torchmetrics {installed_version('torchmetrics')} LPIPS(vgg)", build_torchmetrics),
}
