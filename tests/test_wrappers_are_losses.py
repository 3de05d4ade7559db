"""A wrapper is itself a loss: tiled(), VolumeLoss and PerceptualMetric carry a signature that names what they
wrap, and a wrapper works inside another (VolumeLoss(tiled(...)), PerceptualMetric(tiled(...)))."""
from __future__ import annotations

import pytest
import torch

from perceptloss import LPIPS, FeatureLoss, VolumeLoss, tiled
from perceptloss._signature import parse_signature


def test_exact_tiling_has_the_wrapped_signature():
    """A derived (or checked) halo gives the loss's own numbers, so its signature (a user's halo: test_signature)."""
    loss = FeatureLoss("vgg19", ["relu1_1"], weights=None, reduction="none")
    assert tiled(loss, tile=64).signature == loss.signature == tiled(loss, tile=64, halo=8).signature
    assert tiled(loss, tile=64).reduction == "none" and tiled(loss, tile=64).layers == loss.layers


def test_volume_of_tiled_losses_tells_the_trunks_apart():
    alex = LPIPS("alex", weights=None, heads=None, channels="replicate")
    vgg = LPIPS("vgg", weights=None, heads=None, channels="replicate")
    a, b = VolumeLoss(tiled(alex, tile=64), axes=(2,)), VolumeLoss(tiled(vgg, tile=64), axes=(2,))
    assert a.signature != b.signature
    assert parse_signature(a.signature)["net"] == "alex" and parse_signature(b.signature)["net"] == "vgg"
    x, y = torch.rand(1, 1, 2, 48, 48), torch.rand(1, 1, 2, 48, 48)  # slices within a tile
    assert torch.allclose(a(x, y), VolumeLoss(alex, axes=(2,))(x, y), rtol=1e-5)


def test_metric_of_a_tiled_loss():
    pytest.importorskip("torchmetrics")
    from perceptloss.metric import PerceptualMetric

    loss = FeatureLoss("vgg19", ["relu1_1"], weights=None, reduction="none")
    metric = PerceptualMetric(tiled(loss, tile=32))
    x, y = torch.rand(2, 3, 40, 40), torch.rand(2, 3, 40, 40)
    metric.update(x, y)
    assert torch.allclose(metric.compute(), loss(x, y).mean(), rtol=1e-5)
    assert metric.signature == tiled(loss, tile=32).signature


def test_a_tiled_loss_is_a_metric_of_the_table(tmp_path, monkeypatch):
    """A factory returning a wrapper goes through the metric table (the CLI's --metric module:factory)."""
    (tmp_path / "tiled_metrics.py").write_text(
        "import perceptloss\n\n"
        "def shallow(weights='default'):\n"
        "    loss = perceptloss.FeatureLoss('vgg19', ['relu1_1'], weights=None, reduction='none')\n"
        "    return perceptloss.tiled(loss, tile=32)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from perceptloss import create_metric

    metric = create_metric("tiled_metrics:shallow")
    x, y = torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    assert torch.allclose(metric(x, y), metric.loss(x, y), rtol=1e-5)
    assert metric.signature == metric.loss.signature
