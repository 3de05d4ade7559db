"""Input checks: value checks under torch.compile, offline timm, clear errors for empty batches, numpy
arrays and dtypes, and every submodule in eval."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from perceptloss import FeatureLoss

from .helpers import assert_close, tiny_loss


# --------------------------------------------------------------------------- (5) value checks when compiled


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_loss_reports_0_255_images_and_nan(tiny_net, backend):
    loss = tiny_loss(tiny_net)
    compiled = torch.compile(loss, fullgraph=True, backend=backend)
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    assert_close(compiled(x, y), loss(x, y), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="input_range"):
        compiled(x * 255, y)
    with pytest.raises(ValueError, match="NaN"):
        compiled(x, torch.full_like(y, float("nan")))
    warn = torch.compile(tiny_loss(tiny_net, check_range="warn"), fullgraph=True, backend="aot_eager")
    with pytest.warns(UserWarning, match="input_range"):
        warn(x * 255, y)


@pytest.mark.slow
def test_compiled_training_step_reports_0_255_images(tiny_net):
    loss = tiny_loss(tiny_net)
    head = torch.nn.Conv2d(3, 3, 1)

    def step(x, y):
        return loss(head(x), y)

    compiled = torch.compile(step, fullgraph=True)
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    compiled(x, y).backward()
    assert head.weight.grad is not None
    with pytest.raises(ValueError, match="input_range"):
        compiled(x, y * 255)


# ---------------------------------------------------------------------------- (8) offline timm / HF hub


def test_perceptloss_offline_makes_timm_and_hf_hub_offline(monkeypatch):
    timm = pytest.importorskip("timm")
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("PERCEPTLOSS_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # as if imported while online
    seen = {}
    real_create = timm.create_model

    def create_model(name, pretrained=False, **kw):
        if pretrained:
            seen.update(env=os.environ.get("HF_HUB_OFFLINE"), hub=hf_constants.is_offline_mode())
            raise OSError("no network")  # what timm raises once the hub refuses to connect
        return real_create(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(timm, "create_model", create_model)
    with pytest.raises(FileNotFoundError, match="weights="):
        FeatureLoss("timm:resnet18", ["layer1"])
    assert seen == {"env": "1", "hub": True}
    assert "HF_HUB_OFFLINE" not in os.environ and hf_constants.HF_HUB_OFFLINE is False  # restored afterwards


# ------------------------------------------------------------------------ bad inputs: a message, not a trace


def test_empty_batch_is_a_clear_error(tiny_net):
    with pytest.raises(ValueError, match="empty batch"):
        tiny_loss(tiny_net)(torch.rand(0, 3, 8, 8), torch.rand(0, 3, 8, 8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_half_and_double_images_without_autocast_are_computed(tiny_net, dtype):
    loss = tiny_loss(tiny_net)
    x = torch.rand(2, 3, 8, 8).to(dtype).requires_grad_()
    y = torch.rand(2, 3, 8, 8).to(dtype)
    out = loss(x, y)
    assert_close(out, loss(x.detach().float(), y.float()))
    out.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    vgg = FeatureLoss("vgg19", ["relu1_1"], weights=None)  # the reported case: a conv with a bias
    assert torch.isfinite(vgg(x.detach(), y))


def test_double_loss_casts_float_images_up(tiny_net):
    loss = tiny_loss(tiny_net).double()
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(loss(x, y), loss(x.double(), y.double()))


def test_numpy_arrays_get_a_clear_type_error(tiny_net):
    x = np.random.rand(2, 8, 8, 3).astype(np.float32)
    with pytest.raises(TypeError, match="torch.from_numpy"):
        tiny_loss(tiny_net)(x, x)
    with pytest.raises(TypeError, match=r"\(N, 3, H, W\)"):
        tiny_loss(tiny_net)(torch.rand(2, 3, 8, 8), x)


def test_train_keeps_every_submodule_in_eval(tiny_net):
    loss = FeatureLoss("vgg19", "dfc123", weights=None)
    parent = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), loss)
    for obj in (loss, parent):
        obj.train()
        assert all(not m.training for m in loss.modules())
        assert not loss.preprocess.training
    assert parent[0].training  # the model around the loss does train
