"""What every loss promises (the PerceptualLoss base): frozen by construction, no side effect on a user's
module, state_dict hygiene, argument and range checks, dtype="auto", set_target following .to()."""
import copy

import pytest
import torch
from torch import nn

import perceptloss
from perceptloss import LPIPS, FeatureLoss, StyleLoss
from perceptloss import hardware

from .helpers import TinyNet, assert_close


def _losses():
    return {
        "feature": lambda **kw: FeatureLoss("vgg19", "dfc123", weights=None, **kw),
        "style": lambda **kw: StyleLoss("vgg19", ["relu1_1", "relu2_1"], weights=None, **kw),
        "lpips": lambda **kw: LPIPS("alex", weights=None, **kw),
        "dists": lambda **kw: perceptloss.DISTS(weights=None, **kw),
    }


LOSSES = _losses()


@pytest.fixture(params=sorted(LOSSES))
def make_loss(request):
    return LOSSES[request.param]


class Holder(nn.Module):
    """A model that keeps a loss as a submodule (as VQGAN/LDM code does)."""

    def __init__(self, loss):
        super().__init__()
        self.decoder = nn.Conv2d(3, 3, 1)
        self.loss = loss


def test_frozen_by_construction_against_a_parent(make_loss):
    loss = make_loss()
    model = Holder(loss)
    model.requires_grad_(True)
    model.train()
    assert list(loss.parameters()) == []  # the weights are buffers: nothing to re-enable
    assert not loss.training and not loss.net.training
    before = {k: v.clone() for k, v in loss.net.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    x = torch.rand(2, 3, 64, 64)
    out = model.loss(torch.sigmoid(model.decoder(x)), x).sum()
    out.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in loss.net.state_dict().items())


def test_state_dict_leaves_the_network_out_and_loads_strictly(make_loss):
    loss = make_loss()
    model = Holder(loss)
    keys = list(model.state_dict())
    assert keys == ["decoder.weight", "decoder.bias"]
    result = Holder(make_loss()).load_state_dict(model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_a_state_dict_never_writes_the_network(make_loss):
    """``<prefix>net.*`` tensors are unexpected keys: refused by a strict load, ignored by a non-strict one."""
    model = Holder(make_loss())
    before = {k: v.clone() for k, v in model.loss.net.state_dict().items()}
    carrying = dict(model.state_dict())
    carrying.update({f"loss.net.{k}": torch.full_like(v, 7.0) for k, v in before.items()})
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"loss\.net\."):
        model.load_state_dict(carrying, strict=True)
    result = model.load_state_dict(carrying, strict=False)
    assert sorted(result.unexpected_keys) == sorted(f"loss.net.{k}" for k in before) and not result.missing_keys
    assert all(torch.equal(before[k], v) for k, v in model.loss.net.state_dict().items())
    assert len(carrying) == 2 + len(before)  # the caller's dict is left as it was


def test_switching_layers_keeps_checkpoints_loadable():
    a = Holder(FeatureLoss("vgg19", "dfc123", weights=None))
    b = Holder(FeatureLoss("vgg19", "dfc345", weights=None))
    b.load_state_dict(a.state_dict(), strict=True)
    a.load_state_dict(b.state_dict(), strict=True)


def test_user_module_is_left_as_it_was():
    torch.manual_seed(0)
    disc = TinyNet().train()
    loss = FeatureLoss(disc, ["act1", "act2"])
    assert all(p.requires_grad for p in disc.parameters()) and disc.training
    assert list(loss.parameters()) == []
    # the private copy does not follow later updates of the module
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    before = loss(x, y)
    with torch.no_grad():
        disc.conv1.weight.mul_(2)
    assert torch.equal(loss(x, y), before)


def test_shared_module_is_read_live_and_keeps_learning():
    torch.manual_seed(0)
    disc = TinyNet().train()
    loss = FeatureLoss(disc, ["act1", "act2"], share_module=True)
    assert disc.training and all(p.requires_grad for p in disc.parameters())
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    before = loss(x, y).detach()
    with torch.no_grad():
        disc.conv1.weight.mul_(2)
    assert not torch.equal(loss(x, y), before)
    loss(x, y).backward()
    assert disc.conv1.weight.grad is not None  # gradients reach the owner's parameters
    loss.eval()
    loss.train()
    assert disc.training  # the loss never switches its owner's module


@pytest.mark.parametrize(
    "images, declared, text",
    [
        (lambda: torch.rand(2, 3, 32, 32), (0, 255), "declared as (0, 255)"),
        (lambda: torch.rand(2, 3, 32, 32), (-1, 1), "declared as (-1, 1)"),
        (lambda: torch.rand(2, 3, 32, 32) * 255, (0, 1), "input_range=(0.0, 1.0) was declared"),
        (lambda: torch.rand(2, 3, 32, 32) * 2 - 1, (0, 1), "input_range=(0.0, 1.0) was declared"),
    ],
)
def test_range_mistakes_both_ways(make_loss, images, declared, text, monkeypatch):
    from perceptloss import _validation

    monkeypatch.setattr(_validation, "_WARNED_RANGE", set())
    loss = make_loss(input_range=declared)
    x = images()
    if "declared as" in text:  # the reverse checks can be wrong about a real image: they warn (issue 28, item 15)
        with pytest.warns(_validation.InputRangeWarning, match=__import__("re").escape(text)):
            loss(x, x.flip(0))
    else:
        with pytest.raises(ValueError, match=__import__("re").escape(text)):
            loss(x, x.flip(0))
    quiet = make_loss(input_range=declared, check_range="off")
    quiet(x, x.flip(0))


@pytest.mark.parametrize(
    "images, declared",
    [
        (lambda: torch.rand(2, 3, 32, 32) * 255, (0, 255)),
        (lambda: torch.rand(2, 3, 32, 32) * 2 - 1, (-1, 1)),
        (lambda: torch.zeros(2, 3, 32, 32), (0, 255)),  # a black frame is an image in any range
        (lambda: torch.full((2, 3, 32, 32), 0.8), (-1, 1)),  # a constant bright image too
        (lambda: torch.rand(2, 3, 32, 32) * 0.3, (0, 1)),  # a dark image is not a mistake
    ],
)
def test_no_false_alarm(images, declared):
    loss = FeatureLoss("vgg19", "dfc123", weights=None, input_range=declared)
    x = images()
    loss(x, x.flip(0))


@pytest.mark.parametrize("bad", [(0, float("inf")), (float("nan"), 1), (1, 1), (1, 0), "01", (0,)])
def test_bad_input_range(bad):
    with pytest.raises(ValueError, match="input_range"):
        FeatureLoss("vgg19", "dfc123", weights=None, input_range=bad)


@pytest.mark.parametrize("bad", [[1.0, float("nan"), 1.0], [1.0, float("inf"), 1.0], [1.0, -1.0, 1.0]])
def test_bad_layer_weights(bad):
    with pytest.raises(ValueError, match="finite and >= 0"):
        FeatureLoss("vgg19", "dfc123", weights=None, layer_weights=bad)


def test_layer_weights_as_a_dict_or_a_number():
    loss = FeatureLoss("vgg19", weights=None, layer_weights={"conv1_2": 0.1, "conv3_4": 1.0})
    assert loss.layers == ("conv1_2", "conv3_4") and loss.layer_weights == [0.1, 1.0]
    given = FeatureLoss("vgg19", ["conv3_4", "conv1_2"], weights=None, layer_weights={"conv1_2": 0.1, "conv3_4": 1.0})
    assert given.layer_weights == [1.0, 0.1]  # follows the layers' order
    with pytest.raises(ValueError, match="no weight for"):
        FeatureLoss("vgg19", ["conv1_2", "relu1_1"], weights=None, layer_weights={"conv1_2": 0.1})
    with pytest.raises(TypeError, match="one number"):
        FeatureLoss("vgg19", "dfc123", weights=None, layer_weights=2.0)


def test_fp16_and_fp64_images_for_every_loss(make_loss):
    loss = make_loss(check_range="off")
    for dtype in (torch.float16, torch.float64):
        x = torch.rand(2, 3, 64, 64).to(dtype).requires_grad_()
        value = loss(x, torch.rand(2, 3, 64, 64).to(dtype))
        assert value.dtype == torch.float32  # a float32 loss's own dtype, whatever the images' (issue 35 item 13)
        value.sum().backward()
        assert x.grad.dtype == dtype


def test_set_target_follows_to_and_half(make_loss):
    loss = make_loss()
    y = torch.rand(1, 3, 64, 64)
    loss.set_target(y)
    buffers = dict(loss.named_buffers())
    assert "fixed.layer0" in buffers and "fixed.layer0" not in loss.state_dict()
    loss.to(torch.float64)
    assert loss.fixed_representation[0].dtype == torch.float64
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    loss(x)
    loss.set_target(None)
    assert not loss.has_target and "fixed.layer0" not in dict(loss.named_buffers())


def test_dtype_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(hardware, "bf16_native", lambda device="cpu": (True, "test: native"))
    assert FeatureLoss("vgg19", "dfc123", weights=None, dtype="auto").dtype == torch.bfloat16
    assert LPIPS("alex", weights=None, dtype="auto").dtype == torch.bfloat16
    monkeypatch.setattr(hardware, "bf16_native", lambda device="cpu": (False, "test: emulated"))
    assert StyleLoss("vgg19", weights=None, dtype="auto").dtype == torch.float32
    assert FeatureLoss("vgg19", "dfc123", weights=None).dtype == torch.float32  # the default stays float32
    with pytest.raises(ValueError, match="'auto'"):
        FeatureLoss("vgg19", "dfc123", weights=None, dtype="fast")


def test_explicit_bf16_on_an_emulating_cpu_warns_once(monkeypatch):
    monkeypatch.setattr(hardware, "bf16_native", lambda device="cpu": (False, "test: no AVX512-BF16"))
    monkeypatch.setattr(hardware, "_WARNED", set())
    with pytest.warns(hardware.SlowPrecisionWarning, match="dtype='auto'"):
        FeatureLoss("vgg19", "dfc123", weights=None, dtype=torch.bfloat16)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", hardware.SlowPrecisionWarning)
        FeatureLoss("vgg19", "dfc123", weights=None, dtype=torch.bfloat16)  # once per process


def test_bf16_rule_reads_the_emulation_settings(monkeypatch):
    monkeypatch.setattr(hardware, "_cpu_has", lambda check: check == "avx512_bf16")
    monkeypatch.setattr(hardware, "_aten_capability", lambda: "AVX512")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert hardware.bf16_native("cpu")[0] and hardware.auto_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    native, reason = hardware.bf16_native("cpu")
    assert not native and "ONEDNN_MAX_CPU_ISA" in reason
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(hardware, "_aten_capability", lambda: "AVX2")
    assert not hardware.bf16_native("cpu")[0]
    monkeypatch.setattr(hardware, "_cpu_has", lambda check: False)
    monkeypatch.setattr(hardware, "_aten_capability", lambda: "AVX512")
    native, reason = hardware.bf16_native("cpu")
    assert not native and "neither" in reason
    assert hardware.auto_dtype("meta") == torch.float32


def test_unsupported_inputs_say_so_in_one_line():
    loss = FeatureLoss("vgg19", "dfc123", weights=None)
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(TypeError, match="to_dense"):
        loss(x.to_sparse(), x)
    with pytest.raises(ValueError, match="volumes"):
        loss(x.unsqueeze(2), x.unsqueeze(2))
    with pytest.raises(RuntimeError, match="torch.compile"):
        torch.jit.script(loss)


def test_meta_tensors_propagate_shapes():
    loss = FeatureLoss("vgg19", "dfc123", weights=None, fused=False).to("meta")
    out = loss(torch.rand(2, 3, 32, 32, device="meta"), torch.rand(2, 3, 32, 32, device="meta"))
    assert out.device.type == "meta" and out.shape == ()


def test_deepcopy_and_pickle_keep_the_frozen_state():
    import pickle

    loss = FeatureLoss("vgg19", "dfc123", weights=None)
    for clone in (copy.deepcopy(loss), pickle.loads(pickle.dumps(loss))):
        assert list(clone.parameters()) == []
        x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
        assert_close(clone(x, y), loss(x, y))


def test_torch_func_grad_and_vmap(make_loss):
    """torch.func transforms run the pure-PyTorch path (the operator has no functorch rules): same values."""
    loss = make_loss(reduction="none")
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    g = torch.func.grad(lambda a: loss(a, y).sum())(x)
    xr = x.clone().requires_grad_()
    (ref,) = torch.autograd.grad(loss(xr, y).sum(), xr)
    assert_close(g, ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item())  # fused vs reference rounding
    per_sample = torch.func.vmap(lambda a, b: loss(a[None], b[None])[0])(x, y)
    assert_close(per_sample, loss(x, y), rtol=1e-4, atol=0)
