"""LPIPS: parity with the lpips package, offline checksummed heads, frozen invariants, safe gradients, errors."""
import os
import shutil

import pytest
import torch

import perceptloss
from perceptloss import LPIPS
from perceptloss.functional import unit_normalize
from perceptloss.lpips import LPIPS_NETS
from perceptloss.lpips_heads import head_entry
from .helpers import assert_close, lpips_trunk_state as trunk_state, relative
from perceptloss.weights import WeightsChecksumError, WeightsNotFoundError, cache_path, convert_to_cache, find_source


@pytest.fixture(scope="module")
def lpips_pkg():
    try:
        import lpips
    except ImportError:
        pytest.fail("the lpips package is needed for the parity tests: pip install lpips")
    return lpips


def reference_and_ours(lpips_pkg, net, **kw):
    """lpips' metric with a random trunk and its published heads, and ours with that trunk copied in."""
    torch.manual_seed(0)
    ref = lpips_pkg.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False, **kw)
    ours = LPIPS(net, weights=None, spatial=kw.get("spatial", False))
    ours.net.load_trunk_state_dict(trunk_state(ref))
    return ref, ours


@pytest.mark.parametrize("net", ["vgg", "alex", "squeeze"])
def test_parity_with_lpips(lpips_pkg, net):
    ref, ours = reference_and_ours(lpips_pkg, net)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    with torch.no_grad():
        expected = ref(x, y, normalize=True).flatten()
        got = ours(x, y)
        got_eager = LPIPS(net, weights=None, fused=False).eval()
        got_eager.net.load_trunk_state_dict(trunk_state(ref))
        eager = got_eager(x, y)
        per_layer = ours.per_layer(x, y)
    assert got.shape == (3,) and got.dtype == torch.float32
    assert relative(got, expected) <= 1e-5
    assert relative(eager, expected) <= 1e-5
    assert per_layer.shape == (3, len(LPIPS_NETS[net][1]))
    assert_close(per_layer.sum(1), got)
    # lpips' own [-1, 1] convention, declared as such
    ours_pm = LPIPS(net, weights=None, input_range=(-1, 1))
    ours_pm.net.load_trunk_state_dict(trunk_state(ref))
    with torch.no_grad():
        assert relative(ours_pm(2 * x - 1, 2 * y - 1), ref(2 * x - 1, 2 * y - 1).flatten()) <= 1e-5


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_spatial_parity_with_lpips(lpips_pkg, net):
    ref, ours = reference_and_ours(lpips_pkg, net, spatial=True)
    x, y = torch.rand(2, 3, 48, 56), torch.rand(2, 3, 48, 56)
    with torch.no_grad():
        expected, got = ref(x, y, normalize=True), ours(x, y)
    assert got.shape == expected.shape == (2, 1, 48, 56)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_baseline_without_heads_matches_lpips_false(lpips_pkg):
    torch.manual_seed(0)
    ref = lpips_pkg.LPIPS(pretrained=True, net="alex", lpips=False, pnet_rand=True, verbose=False)
    ours = LPIPS("alex", weights=None, heads=None)
    ours.net.load_trunk_state_dict(trunk_state(ref))
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert relative(ours(x, y), ref(x, y, normalize=True).flatten()) <= 1e-5


def test_explicit_torchvision_trunk_file(lpips_pkg, tmp_path):
    ref, ours = reference_and_ours(lpips_pkg, "alex")
    path = tmp_path / "alexnet-random.pth"
    torch.save(trunk_state(ref), path)
    from_file = LPIPS("alex", weights=path)
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert relative(from_file(x, y), ref(x, y, normalize=True).flatten()) <= 1e-5


def test_heads_found_offline_checksummed_and_cached(lpips_pkg, tmp_path):
    for net in ("alex", "vgg", "squeeze"):
        entry = head_entry(net)
        source = find_source(entry)
        assert source is not None and source.is_file()
        LPIPS(net, weights=None)
        cached = cache_path(entry)
        assert cached.is_file() and cached.with_name(cached.name + ".sha256").is_file()
    # a damaged source file is refused
    entry = head_entry("alex")
    damaged = tmp_path / "alex.pth"
    shutil.copy(find_source(entry), damaged)
    with open(damaged, "ab") as f:
        f.write(b"\0")
    with pytest.raises(WeightsChecksumError, match="sha256"):
        convert_to_cache(entry, damaged)
    # heads given as a file are used as given
    explicit = LPIPS("alex", weights=None, heads=find_source(entry))
    default = LPIPS("alex", weights=None)
    for a, b in zip(explicit.heads, default.heads):
        assert torch.equal(a, b) and (a >= 0).all()


def test_missing_trunk_weights_name_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match=r"alexnet-owt-.*\.pth"):
        LPIPS("alex")


def test_frozen_by_construction(lpips_pkg):
    metric = LPIPS("vgg", weights=None)
    assert not any(p.requires_grad for p in metric.parameters())
    assert {n for n, _ in metric.named_buffers() if n.startswith("criterion.head")} == {f"criterion.head{k}" for k in range(5)}
    assert not any(isinstance(m, torch.nn.Dropout) for m in metric.modules())
    metric.train()
    assert all(not m.training for m in metric.net.modules())
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert not metric(x, y).requires_grad  # nothing trainable: a metric call builds no graph
    xg = x.clone().requires_grad_()
    metric(xg, y).sum().backward()
    assert xg.grad.abs().sum() > 0 and all(p.grad is None for p in metric.parameters())


def test_no_nan_gradient_where_features_vanish(lpips_pkg):
    zeros = torch.zeros(1, 4, 3, 3, requires_grad=True)
    out = unit_normalize(zeros)
    out.sum().backward()
    assert torch.isfinite(zeros.grad).all() and (out == 0).all()
    # identical inputs through a trunk whose first layer is all zero: every relu1 vector has norm 0
    ref, ours = reference_and_ours(lpips_pkg, "alex")
    with torch.no_grad():
        ours.net.features[0].weight.zero_()
        ours.net.features[0].bias.zero_()
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    value = ours(x, x.detach())
    value.sum().backward()
    assert (value == 0).all() and torch.isfinite(x.grad).all() and (x.grad == 0).all()
    # identical inputs with an ordinary trunk
    x2 = torch.rand(2, 3, 64, 64, requires_grad=True)
    LPIPS("vgg", weights=None)(x2, x2.detach()).sum().backward()
    assert torch.isfinite(x2.grad).all()


def test_reductions_and_autocast():
    metric = LPIPS("alex", weights=None)
    x, y = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    per_sample = metric(x, y)
    for reduction, expected in (("mean", per_sample.mean()), ("sum", per_sample.sum())):
        reduced = LPIPS("alex", weights=None, reduction=reduction)
        reduced.net.load_state_dict(metric.net.state_dict())  # the loss's state_dict leaves the trunk out
        assert_close(reduced(x, y), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = metric(x, y)
    assert low.dtype == torch.float32
    assert_close(low, per_sample, rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize(
    "x, y, err, text",
    [
        (torch.rand(3, 64, 64), torch.rand(3, 64, 64), ValueError, "unsqueeze"),
        (torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 60), ValueError, "shapes differ"),
        (torch.rand(1, 3, 64, 64) * 255, torch.rand(1, 3, 64, 64), ValueError, "input_range"),
        (torch.full((1, 3, 64, 64), float("nan")), torch.rand(1, 3, 64, 64), ValueError, "NaN"),
        (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), ValueError, "too small"),
    ],
)
def test_bad_input_errors(x, y, err, text):
    metric = LPIPS("alex", weights=None)
    with pytest.raises(err) as info:
        metric(x, y)
    assert text in str(info.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="net must be one of"):
        LPIPS("resnet", weights=None)
    with pytest.raises(ValueError, match="version must be"):
        LPIPS("alex", version="0.2", weights=None)
    with pytest.raises(ValueError, match="reduction"):
        LPIPS("alex", weights=None, reduction="avg")


def test_registry_entries_for_the_trunks():
    assert {"alexnet", "squeezenet1_1", "vgg16"} <= set(perceptloss.list_backbones())
    assert perceptloss.list_layers("alexnet")[:3] == ("conv1", "relu1", "pool1")
    assert "fire9" in perceptloss.list_layers("squeezenet1_1")
    assert perceptloss.list_weights("alexnet") == ["torchvision"]
    loss = perceptloss.FeatureLoss("alexnet", ["conv2", "relu2"], weights=None)
    conv2, relu2 = loss.features(torch.randn(1, 3, 64, 64))
    assert (conv2 < 0).any() and (relu2 >= 0).all()  # out-of-place ReLUs: conv2 is read before its ReLU


def test_compile_fullgraph():
    metric = LPIPS("alex", weights=None, reduction="mean")
    x, y = torch.rand(2, 3, 64, 64, requires_grad=True), torch.rand(2, 3, 64, 64)
    eager = metric(x, y)
    # aot_eager: the claim is a full graph (no break) through AlexNet and its heads, with right values and a
    # gradient; inductor's code generation for AlexNet would cost a cold CI 1-4 minutes of C++ compiles and is
    # covered on tiny networks (test_feature_loss_api, test_input_checks, test_style_loss).
    compiled = torch.compile(metric, fullgraph=True, backend="aot_eager")(x, y)
    assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    compiled.backward()
    assert torch.isfinite(x.grad).all()


def _ddp_worker(rank, world, port, results):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Conv2d(3, 3, 3, padding=1)
            self.metric = LPIPS("alex", weights=None, reduction="mean", check_range="off")

        def forward(self, x, y):
            return self.metric(self.head(x), y)

    model = torch.nn.parallel.DistributedDataParallel(Model(), find_unused_parameters=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    for _ in range(2):  # a second step fails if DDP expected gradients for the metric's tensors
        opt.zero_grad()
        model(x, y).backward()
        opt.step()
    results[rank] = torch.cat([p.detach().flatten() for p in model.module.head.parameters()])
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_process_gloo_steps():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_ddp_worker, args=(2, port, results), nprocs=2, join=True)
    assert set(results.keys()) == {0, 1}
    assert_close(results[0], results[1])


def test_numpy_arrays_get_a_clear_type_error():
    import numpy as np

    metric = perceptloss.LPIPS("alex", weights=None)
    with pytest.raises(TypeError, match="torch.from_numpy"):
        metric(np.zeros((1, 3, 32, 32), np.float32), torch.zeros(1, 3, 32, 32))
