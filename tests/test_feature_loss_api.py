"""FeatureLoss mechanics: frozen network, gradients, errors, registry, timm, compile, DDP."""
import os
import warnings

import pytest
import torch

import perceptloss
from perceptloss import FeatureLoss
from perceptloss.preprocessing import IDENTITY


from .helpers import assert_close, tiny_loss


def test_frozen_by_construction(tiny_net):
    loss = FeatureLoss("vgg19", "dfc123", weights=None)
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.net.training and all(not m.training for m in loss.net.modules())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss(x, torch.rand(2, 3, 32, 32)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())


def test_truncated_after_deepest_layer_and_inplace_relu_only_where_nothing_read_is_overwritten():
    loss = FeatureLoss("vgg19", ["conv3_1", "relu1_1", "conv2_1"], weights=None)
    assert len(loss.net.features) == 11  # up to conv3_1 (index 10)
    relus = {i: m.inplace for i, m in enumerate(loss.net.features) if isinstance(m, torch.nn.ReLU)}
    # relu1_1 (1), relu1_2 (3), relu2_1 (6, after the requested conv2_1), relu2_2 (8)
    assert relus == {1: True, 3: True, 6: False, 8: True}
    x = torch.randn(1, 3, 16, 16)
    conv31, relu11, conv21 = loss.features(x)
    assert (conv31 < 0).any(), "conv3_1 must be read before its ReLU"
    assert (conv21 < 0).any(), "conv2_1 must be read before its ReLU"
    assert (relu11 >= 0).all()
    h, reference = loss.preprocess(x), {}
    for i, m in enumerate(loss.net.features):  # every module out of place
        h = torch.relu(h) if isinstance(m, torch.nn.ReLU) else m(h)
        reference[i] = h
    for got, i in zip((conv31, relu11, conv21), (10, 1, 5)):
        assert_close(got, reference[i])


def test_gradcheck_float64_tiny_backbone(tiny_net):
    for fused in (False, None):
        loss = tiny_loss(tiny_net, fused=fused, check_range="off").double()
        x = torch.rand(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
        y = torch.rand(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: loss(a, b), (x, y))


def test_target_features_without_grad(tiny_net):
    loss = tiny_loss(tiny_net)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    out = loss.per_layer(x, torch.rand(2, 3, 8, 8))
    assert out.requires_grad and out.shape == (2, 2)
    y = torch.rand(2, 3, 8, 8, requires_grad=True)
    loss(torch.rand(2, 3, 8, 8), y).backward()
    assert y.grad is not None


@pytest.mark.parametrize(
    "x, y, err, text",
    [
        (torch.rand(3, 8, 8), torch.rand(3, 8, 8), ValueError, "unsqueeze"),
        (torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), ValueError, "(N, 3, H, W)"),
        (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 9, 8), ValueError, "shapes differ"),
        (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8).double(), TypeError, "cast"),
        (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), torch.rand(1, 3, 8, 8), TypeError, "/ 255"),
        (torch.full((1, 3, 8, 8), float("nan")), torch.rand(1, 3, 8, 8), ValueError, "NaN"),
        (torch.rand(1, 3, 8, 8), torch.full((1, 3, 8, 8), float("inf")), ValueError, "Inf"),
        (torch.rand(1, 3, 8, 8) * 255, torch.rand(1, 3, 8, 8), ValueError, "input_range"),
        (torch.rand(1, 3, 8, 8) * 2 - 1, torch.rand(1, 3, 8, 8), ValueError, "(-1, 1)"),
    ],
)
def test_bad_input_errors(tiny_net, x, y, err, text):
    with pytest.raises(err, match=None) as info:
        tiny_loss(tiny_net)(x, y)
    assert text in str(info.value)


def test_device_mismatch_error(tiny_net):
    with pytest.raises(ValueError, match="same device"):
        tiny_loss(tiny_net)(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8, device="meta"))


def test_range_check_can_warn_or_be_off(tiny_net):
    x, y = torch.rand(1, 3, 8, 8) * 255, torch.rand(1, 3, 8, 8)
    with pytest.warns(UserWarning, match="input_range"):
        tiny_loss(tiny_net, check_range="warn")(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_loss(tiny_net, check_range="off")(x, y)
    tiny_loss(tiny_net)(torch.rand(1, 3, 8, 8) * 1.1, y)  # a small overshoot is fine


def test_too_small_images():
    loss = FeatureLoss("vgg19", "dfc345", weights=None)
    with pytest.raises(ValueError, match="too small"):
        loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_unknown_names_suggest_the_closest():
    with pytest.raises(KeyError, match="Did you mean 'relu3_1'"):
        FeatureLoss("vgg19", ["relu3-1"], weights=None)
    with pytest.raises(KeyError, match="vgg19"):
        FeatureLoss("vgg91", "dfc123", weights=None)
    with pytest.raises(KeyError, match="caffe"):
        FeatureLoss("vgg19", "dfc123", weights="cafe")
    with pytest.raises(ValueError, match="more than once"):
        FeatureLoss("vgg19", ["relu1_1", "relu1_1"], weights=None)
    with pytest.raises(ValueError, match="reduction"):
        FeatureLoss("vgg19", "dfc123", weights=None, reduction="avg")


def test_registry_lists_and_registers():
    assert {"vgg16", "vgg19"} <= set(perceptloss.list_backbones())
    layers = perceptloss.list_layers("vgg19")
    assert layers[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1") and layers[-1] == "pool5"
    assert len(layers) == 16 * 2 + 5
    assert "relu5_3" in perceptloss.list_layers("vgg16") and "relu5_4" not in perceptloss.list_layers("vgg16")
    assert perceptloss.list_weights("vgg19")[0] == "caffe"
    spec = perceptloss.registry.get_backbone("vgg16")
    custom = perceptloss.registry.BackboneSpec(
        name="my-vgg", layers=spec.layers, build=spec.build, load=spec.load
    )
    perceptloss.registry.register_backbone(custom)
    try:
        assert "my-vgg" in perceptloss.list_backbones() and perceptloss.list_weights("my-vgg") == []
        with pytest.raises(ValueError, match="already registered"):
            perceptloss.registry.register_backbone(custom)
        assert FeatureLoss("my-vgg", "lpips", weights=None).layers[-1] == "relu5_3"
    finally:
        perceptloss.registry._BACKBONES.pop("my-vgg")


def test_timm_backbone_stages():
    pytest.importorskip("timm")
    assert "layer2" in perceptloss.list_layers("timm:resnet18")
    loss = FeatureLoss("timm:resnet18", ["layer2", "layer1"], weights=None)
    assert not any(p.requires_grad for p in loss.parameters())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    f2, f1 = loss.features(x)
    assert f1.shape[1] == 64 and f2.shape[1] == 128
    loss(x, torch.rand(2, 3, 32, 32)).backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(FileNotFoundError, match="weights="):
        FeatureLoss("timm:resnet18", ["layer1"])  # offline: explains where to put the file


@pytest.mark.slow
def test_torch_compile_module_using_the_loss(tiny_net):
    loss = tiny_loss(tiny_net)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Conv2d(3, 3, 1)
            self.loss = loss

        def forward(self, x):
            return self.loss(self.head(x), x)

    model = Model()
    x = torch.rand(2, 3, 8, 8)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)
    assert_close(compiled(x), eager, rtol=1e-5, atol=1e-6)


def _ddp_worker(rank, world, port, results):
    import torch.distributed as dist

    from tests.helpers import TinyNet

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.loss = FeatureLoss(TinyNet(), ["act1", "act2"], normalization=IDENTITY, check_range="off")

        def forward(self, x, y):
            return self.loss(self.head(x), y)

    model = torch.nn.parallel.DistributedDataParallel(Model(), find_unused_parameters=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    model(x, y).backward()
    opt.step()
    results[rank] = torch.cat([p.detach().flatten() for p in model.module.head.parameters()])
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_process_gloo_step():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(2, port, results), nprocs=2, join=True)
    assert set(results.keys()) == {0, 1}
    assert_close(results[0], results[1])  # gradients were averaged: identical updates


def test_autocast_accepts_a_low_precision_input_next_to_a_float_target(tiny_net):
    loss = tiny_loss(tiny_net)
    x, y = torch.rand(2, 3, 8, 8).bfloat16(), torch.rand(2, 3, 8, 8)
    with pytest.raises(TypeError, match="autocast"):
        loss(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss.per_layer(x, y)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_memory_format_changes_speed_not_results():
    torch.manual_seed(0)
    loss = FeatureLoss("vgg19", ["relu1_1", "conv2_1", "relu3_1"], weights=None)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = torch.rand(2, 3, 32, 32)
    results = {}
    for mf in ("auto", "channels_last", "contiguous", torch.channels_last):
        loss.memory_format = mf
        value = loss(x, y)
        (grad,) = torch.autograd.grad(value, x)
        assert grad.is_contiguous(), "the gradient keeps the input's layout"
        results[str(mf)] = (value, grad)
    ref_value, ref_grad = results["contiguous"]
    for value, grad in results.values():
        assert_close(value, ref_value, rtol=1e-5, atol=1e-6)
        assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)
    xcl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    loss.memory_format = "contiguous"
    (grad,) = torch.autograd.grad(loss(xcl, y), xcl)
    assert grad.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="memory_format must be"):
        FeatureLoss("vgg19", "dfc123", weights=None, memory_format="nhwc")


def test_convolution_weights_follow_the_activation_layout():
    torch.manual_seed(0)
    loss = FeatureLoss("vgg19", ["relu1_1", "relu3_1"], weights=None)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    convs = [m for m in loss.net.modules() if isinstance(m, torch.nn.Conv2d)]
    before = [c.weight.detach().clone() for c in convs]
    loss.memory_format = "contiguous"
    contiguous = loss(x, y)
    assert all(c.weight.is_contiguous() for c in convs)
    loss.memory_format = "auto"  # channels_last on the CPU
    with torch.inference_mode():  # converted outside inference mode: the weights stay usable with autograd
        value = loss(x, y)
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) and not c.weight.is_inference() for c in convs)
    assert all(torch.equal(c.weight, w) for c, w in zip(convs, before))
    assert_close(value, contiguous)
    xg = x.clone().requires_grad_()
    loss(xg, y).backward()
    loss.memory_format = "contiguous"
    loss(x, y)
    assert all(c.weight.is_contiguous() for c in convs)
    # a shared module is its owner's: its weights are never converted
    owner = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    shared = FeatureLoss(owner, ["1"], share_module=True)
    shared(x, y)
    assert owner[0].weight.is_contiguous()


def test_reduced_precision_network_close_to_float32():
    torch.manual_seed(0)
    ref = FeatureLoss("vgg19", "dfc123", weights=None, reduction="none")
    half = FeatureLoss("vgg19", "dfc123", weights=None, reduction="none", dtype=torch.bfloat16)
    half.net.load_state_dict(ref.net.state_dict())  # copied and cast to bfloat16
    assert all(p.dtype == torch.bfloat16 for p in half.net.parameters())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = torch.rand(2, 3, 32, 32)
    value = half(x, y)
    assert value.dtype == torch.float32  # accumulated in float32
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert grad.dtype == torch.float32
    (ref_grad,) = torch.autograd.grad(ref(x, y).sum(), x)
    assert_close(value, ref(x, y), rtol=0.05, atol=0)
    assert torch.nn.functional.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0) > 0.98
    with pytest.raises(ValueError, match="floating torch.dtype"):
        FeatureLoss("vgg19", "dfc123", weights=None, dtype=torch.int8)
