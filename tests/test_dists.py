"""DISTS: parity with the official DISTS_pytorch 0.1 (same random trunk), offline checksummed α/β, frozen
invariants, float32 statistics under bf16, range/NaN checks, set_target, torch.compile."""
import dataclasses
import types

import pytest
import torch

from perceptloss.dists import DISTS, DISTS_CHANNELS, DISTS_ENTRY, dists_statistics
from perceptloss.weights import WeightsNotFoundError, cache_path, find_source, resolve, sha256_file
from .helpers import assert_close, assert_equal, standin_entries


@pytest.fixture(scope="module")
def official():
    return official_dists()


def official_dists():
    """The official DISTS_pt.DISTS with a random VGG16 trunk (its torchvision call would download) and the
    published α/β, in eval mode."""
    try:
        from DISTS_pytorch import DISTS_pt
    except ImportError:
        pytest.fail("the parity tests need the official code: python -m pip install --no-deps dists-pytorch==0.1")
    import torchvision

    saved = DISTS_pt.models
    DISTS_pt.models = types.SimpleNamespace(vgg16=lambda pretrained=True: torchvision.models.vgg16(weights=None))
    try:
        torch.manual_seed(0)
        ref = DISTS_pt.DISTS(load_weights=False)
    finally:
        DISTS_pt.models = saved
    # its α/β from the wheel's file (the official code reads sys.prefix/weights.pt, the same bytes)
    path = find_source(DISTS_ENTRY)
    published = torch.load(path, map_location="cpu", weights_only=True)
    ref.alpha.data, ref.beta.data = published["alpha"], published["beta"]
    return ref.eval()


def trunk_state(ref):
    """The official ``stageK.<index>.*`` tensors in torchvision's ``features.<index>.*`` naming."""
    return {"features." + k.split(".", 1)[1]: v for k, v in ref.state_dict().items()
            if k.startswith("stage") and not k.endswith(".filter")}


def ours_like(ref, **kw):
    ours = DISTS(weights=None, **kw)
    ours.net.load_trunk_state_dict(trunk_state(ref))
    return ours


def images(n=3, size=48, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g).to(dtype), torch.rand(n, 3, size, size, generator=g).to(dtype))


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def value_and_grad(fn, x, y):
    x = x.clone().requires_grad_()
    v = fn(x, y)
    v.sum().backward()
    return v.detach(), x.grad


@pytest.mark.parametrize("memory_format", ["auto", "contiguous"])
def test_parity_float64(official, memory_format):
    ref = official.double()
    ours = ours_like(ref, memory_format=memory_format).double()
    x, y = images(dtype=torch.float64)
    ve, ge = value_and_grad(lambda a, b: ref(a, b, require_grad=True), x, y)
    vo, go = value_and_grad(ours, x, y)
    official.float()
    assert vo.shape == (3,)
    assert rel(vo, ve) <= 1e-5
    assert rel(go, ge) <= 1e-5


def test_parity_float32(official):
    """float32: values to 1e-5; gradients to 1e-4 (norm-wise): the L2 pooling's sqrt(x + 1e-12) has a slope of
    5e5 where a random trunk's features vanish, which magnifies float32 rounding (float64 above: 1e-5)."""
    ours = ours_like(official, memory_format="contiguous")
    x, y = images()
    ve, ge = value_and_grad(lambda a, b: official(a, b, require_grad=True), x, y)
    vo, go = value_and_grad(ours, x, y)
    assert vo.dtype == torch.float32
    assert ((vo - ve).abs() / ve.abs()).max().item() <= 1e-5
    assert ((go - ge).norm() / ge.norm()).item() <= 1e-4
    # the default layout (channels_last on the CPU) gives the same value
    vo_auto = ours_like(official)(x, y)
    assert ((vo_auto - ve).abs() / ve.abs()).max().item() <= 1e-5


def test_catalogue_and_registry():
    import perceptloss

    assert perceptloss.weights.get_weights("dists.v0.1") is DISTS_ENTRY
    assert perceptloss.weights.get_weights("dists") is DISTS_ENTRY
    assert "vgg16_l2pool" in perceptloss.list_backbones()
    assert perceptloss.DISTS is DISTS


def test_alpha_beta_from_the_wheel_checked_and_cached(official):
    source = find_source(DISTS_ENTRY)
    assert source is not None and sha256_file(source) == DISTS_ENTRY.source_sha256
    state = resolve(DISTS_ENTRY)
    assert cache_path(DISTS_ENTRY).is_file()
    assert state["alpha"].shape == (sum(DISTS_CHANNELS),)
    assert_equal(state["alpha"], official.alpha.detach().flatten())
    assert_equal(state["beta"], official.beta.detach().flatten())


def test_missing_alpha_beta_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEPTLOSS_HOME", str(tmp_path))
    entry = dataclasses.replace(DISTS_ENTRY, finders=())
    with pytest.raises(WeightsNotFoundError, match="pip install dists-pytorch==0.1 --no-deps"):
        resolve(entry)


def test_alpha_beta_none_says_what_it_takes():
    with pytest.raises(TypeError, match="alpha_beta must be 'default' .* or the path of a DISTS weights file, got NoneType"):
        DISTS(weights=None, alpha_beta=None)


def test_missing_trunk_names_the_torchvision_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPTLOSS_HOME", str(tmp_path / "home"))
    # TORCH_HOME, not torch.hub.set_dir: restoring set_dir(get_dir()) would pin the hub folder for every
    # later test in the process (get_dir() then no longer follows TORCH_HOME)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFoundError, match="vgg16-397923af.pth"):
        DISTS()
    with pytest.raises(WeightsNotFoundError, match="nope.pth does not exist"):  # issue 28 item 12: one line
        DISTS(weights=str(tmp_path / "nope.pth"))


def test_trunk_from_a_torchvision_file(official, tmp_path):
    path = tmp_path / "vgg16-397923af.pth"
    torch.save({**trunk_state(official), "classifier.0.weight": torch.zeros(2, 2)}, path)
    with standin_entries(path):  # the official package's trunk: not torchvision's bytes
        a = DISTS(weights=path)
    b = ours_like(official)
    x, y = images()
    assert_close(a(x, y), b(x, y))


def test_frozen_by_construction(official):
    d = ours_like(official)
    assert list(d.parameters()) == []
    assert {"criterion.alpha", "criterion.beta"} <= {n for n, _ in d.named_buffers()}
    assert len(d.state_dict()) == 0  # α, β and the trunk stay out of a parent model's state_dict
    d.requires_grad_(True)
    assert list(d.parameters()) == [] and not d.alpha.requires_grad
    d.train()
    assert not d.training and not d.net.training
    x, y = images()
    x.requires_grad_()
    d(x, y).sum().backward()
    assert all(p.grad is None for p in d.parameters())
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_identical_images_give_zero_and_finite_gradient(official):
    d = ours_like(official)
    x, _ = images()
    x.requires_grad_()
    v = d(x, x.detach())
    assert v.abs().max().item() < 1e-5
    v.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_reductions_per_layer_and_input_range(official):
    d = ours_like(official)
    x, y = images()
    per_sample = d(x, y)
    terms = d.per_layer(x, y)
    assert terms.shape == (3, len(DISTS_CHANNELS)) and d.layers[0] == "image"
    assert_close(1 - terms.sum(1), per_sample)
    assert_close(ours_like(official, reduction="mean")(x, y), per_sample.mean())
    assert_close(ours_like(official, reduction="sum")(x, y), per_sample.sum())
    signed = ours_like(official, input_range=(-1, 1))
    assert_close(signed(2 * x - 1, 2 * y - 1), per_sample, rtol=1e-5, atol=1e-6)


def test_set_target(official):
    d = ours_like(official)
    x, y = images()
    expected = d(x, y)
    assert_close(d.set_target(y)(x), expected)
    d.set_target(y[:1])
    assert_close(d(x), ours_like(official)(x, y[:1].expand_as(x)))
    with pytest.raises(ValueError, match="target's size"):
        d(torch.rand(3, 3, 32, 32))
    with pytest.raises(ValueError, match="set_target"):
        d.set_target(None)(x)


def test_range_and_nan_errors(official):
    d = ours_like(official)
    x, y = images()
    with pytest.raises(ValueError, match="input_range"):
        d(x * 255, y * 255)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        d(bad, y)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        d(x[:, :1], y[:, :1])


def test_statistics_float32_under_bf16(official):
    fx, fy = torch.rand(2, 8, 5, 5).bfloat16(), torch.rand(2, 8, 5, 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s1, s2 = dists_statistics(fx, fy)
    assert s1.dtype == s2.dtype == torch.float32
    expected = dists_statistics(fx.float(), fy.float())
    assert_close(s1, expected[0])
    assert_close(s2, expected[1])
    x, y = images()
    full = ours_like(official)(x, y)
    for out in (ours_like(official, dtype=torch.bfloat16)(x, y), _autocast(ours_like(official), x, y)):
        assert out.dtype == torch.float32
        assert (out - full).abs().max().item() < 0.05 * full.abs().max().item()


def _autocast(d, x, y):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return d(x, y)


def test_torch_compile_fullgraph(official):
    d = ours_like(official)
    x, y = images(n=2, size=32)
    compiled = torch.compile(d, fullgraph=True, backend="aot_eager")  # capture + checks; inductor: tiny-net tests
    assert_close(compiled(x, y), d(x, y), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="input_range"):
        compiled(x * 255, y * 255)


def test_the_checksum_error_fix_works_as_printed(tmp_path, monkeypatch, capsys):
    import re
    import shlex

    from perceptloss.__main__ import main as cli
    from perceptloss.weights import WeightsChecksumError

    monkeypatch.setenv("PERCEPTLOSS_HOME", str(tmp_path))
    resolve(DISTS_ENTRY)
    path = cache_path(DISTS_ENTRY)
    path.write_bytes(path.read_bytes()[:-8] + b"garbage!")
    with pytest.raises(WeightsChecksumError) as info:
        DISTS(weights=None)
    commands = [shlex.split(c) for c in re.findall(r"python -m perceptloss ([^`\n]+?)(?:`|$| says)", str(info.value))]
    assert commands, str(info.value)
    for argv in commands:
        assert cli(argv) == 0, argv
    capsys.readouterr()
    assert cli(["verify"]) == 0
    DISTS(weights=None)
