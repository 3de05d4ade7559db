"""The smallest image a loss takes is known up front from its trunk's kernels, strides and pools, and images
below it raise ``perceptloss.ImageTooSmallError`` before the network runs; nothing matches on message text."""
from __future__ import annotations

import pathlib
import re

import pytest
import torch

from perceptloss import DISTS, LPIPS, FeatureLoss, ImageTooSmallError, VolumeLoss, create_backbone
from perceptloss.preprocessing import IDENTITY

from .helpers import TinyNet


def _has_features(net, h: int, w: int) -> bool:
    try:
        with torch.no_grad():
            return all(f.shape[2:].numel() > 0 for f in net(torch.rand(1, 3, h, w)))
    except RuntimeError:  # torch's own "output size is too small"
        return False


@pytest.mark.parametrize(
    "backbone, layer",
    [("vgg19", "relu5_1"), ("vgg19", "pool5"), ("vgg19", "relu2_1"), ("alexnet", "relu5"), ("alexnet", "pool5"),
     ("squeezenet1_1", "fire3"), ("squeezenet1_1", "fire9"), ("vgg16_l2pool", "relu5_3")],
)
def test_min_size_is_the_exact_threshold(backbone, layer):
    net, _ = create_backbone(backbone, [layer], None)
    (h, w), = net.min_input_sizes().values()
    assert _has_features(net, h, w + 5) and _has_features(net, h + 5, w)
    if h > 1:
        assert not _has_features(net, h - 1, w + 5)
    if w > 1:
        assert not _has_features(net, h + 5, w - 1)


def test_known_sizes():
    net, _ = create_backbone("vgg19", ["relu1_1", "relu3_1", "relu5_1"], None)
    assert net.min_input_sizes() == {"relu1_1": (1, 1), "relu3_1": (4, 4), "relu5_1": (16, 16)}
    alex, _ = create_backbone("alexnet", ["relu5"], None)
    assert alex.min_input_sizes() == {"relu5": (31, 31)}


def test_raised_before_the_network_runs_with_what_to_do():
    loss = FeatureLoss("vgg19", "dfc345", weights=None)  # relu3_1, relu4_1, relu5_1
    loss.net.forward = lambda x: pytest.fail("the network ran")
    with pytest.raises(ImageTooSmallError, match=r"images of size 12x40 are too small .*relu5_1 needs 16x16.*"
                                                 r"use images of at least 16x16, or only layers that fit 12x40 "
                                                 r"\(here \['relu3_1', 'relu4_1'\]\)") as info:
        loss(torch.rand(1, 3, 12, 40), torch.rand(1, 3, 12, 40))
    err = info.value
    assert isinstance(err, ValueError)
    assert err.size == (12, 40) and err.min_size == (16, 16) and err.layers == ("relu5_1",)
    with pytest.raises(ImageTooSmallError):
        loss.set_target(torch.rand(1, 3, 8, 8))


def test_the_advice_works_as_printed():
    x = torch.rand(1, 3, 12, 40)
    FeatureLoss("vgg19", ["relu3_1", "relu4_1"], weights=None)(x, x.flip(-1))
    FeatureLoss("vgg19", "dfc345", weights=None)(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))


def test_fixed_layer_losses_advise_the_size_only():
    with pytest.raises(ImageTooSmallError, match=r"LPIPS's layers .*use images of at least 31x31$"):
        LPIPS("alex", weights=None, heads=None)(torch.rand(1, 3, 30, 64), torch.rand(1, 3, 30, 64))
    # L2 pooling pads, so the trunk takes any size, but DISTS' variances need 2x2 positions at relu5_3
    with pytest.raises(ImageTooSmallError, match="at least 17x17") as info:
        DISTS(weights=None)(torch.rand(1, 3, 16, 64), torch.rand(1, 3, 16, 64))
    assert info.value.min_size == (17, 17) and info.value.size == (16, 64)
    DISTS(weights=None)(torch.rand(1, 3, 17, 17), torch.rand(1, 3, 17, 17))


def test_module_backbones_report_empty_features_as_too_small():
    class Shrinking(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = TinyNet()
            self.pool = torch.nn.AdaptiveAvgPool2d((0, 0))  # its size rule is unknown up front

        def forward(self, x):
            return self.pool(self.net(x))

    loss = FeatureLoss(Shrinking(), ["pool"], normalization=IDENTITY)
    assert loss.net.min_input_sizes() is None
    with pytest.raises(ImageTooSmallError, match="too small for layer pool") as info:
        loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    assert info.value.min_size is None


def test_volume_loss_names_the_thin_axis_with_the_same_type():
    loss2d = FeatureLoss("vgg19", "dfc123", weights=None, reduction="none")
    x = torch.rand(1, 3, 2, 16, 16)
    with pytest.raises(ImageTooSmallError, match=r"thin along axis 2: slice only along it \(axes=\(2,\)\)"):
        VolumeLoss(loss2d)(x, x.flip(-1))


def test_no_error_is_recognised_by_its_wording():
    package = pathlib.Path(__file__).parent.parent / "perceptloss"
    for path in package.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"in str\((e|exc|err)\)", text), f"{path} matches an error by its message"
