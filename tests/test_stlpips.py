"""ST-LPIPS, ``LPIPS(net, variant="shift_tolerant")``: parity with the stlpips-pytorch package on real CelebA
pairs (values, maps and input gradients), its trained weights found offline through the wheel's metadata,
checksummed and cached, the anti-aliased (BlurPool) trunks, and the loss contract (tiled, VolumeLoss, channels,
score, PerceptualMetric, signature, dtype, checkpoint, torch.compile).

The package is a test oracle only (the library never imports it); the tests that need it skip cleanly where it
is not installed (``pip install stlpips-pytorch==0.0.2 --no-deps``). Its ``stlpips.py`` imports IPython and
torchsummary, which it never uses: the oracle fixture stubs them where they are missing.
"""
from __future__ import annotations

import importlib.metadata
import io
import shutil
import sys
import types

import pytest
import torch

import perceptloss
from perceptloss import LPIPS, VolumeLoss, create_metric, tiled
from perceptloss.__main__ import main as cli
from perceptloss._signature import parse_signature
from perceptloss.backbones.blurpool import (
    ALEXNET_ST_LAYERS,
    VGG16_ST_LAYERS,
    BlurPool2d,
    binomial_window,
    convert_stlpips_trunk,
)
from perceptloss.stlpips import STLPIPS_NETS
from perceptloss.weights import WeightsNotFoundError, cache_path, find_source, get_weights, resolve

from .helpers import assert_close, relative
from .score_images import celeba_test_files, load_rgb

NETS = ("alex", "vgg")


def _installed() -> bool:
    try:
        importlib.metadata.distribution("stlpips-pytorch")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_package = pytest.mark.skipif(
    not _installed(), reason="stlpips-pytorch is not installed: pip install stlpips-pytorch==0.0.2 --no-deps")


@pytest.fixture(scope="module")
def stlpips_pkg():
    """The package's ``stlpips`` module, with its two stray imports stubbed where they are missing."""
    stubs = {"IPython": {"embed": lambda *a, **k: None}, "torchsummary": {"summary": lambda *a, **k: None}}
    added = []
    for name, attributes in stubs.items():
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__dict__.update(attributes)
            sys.modules[name] = module
            added.append(name)
    from stlpips_pytorch import stlpips

    yield stlpips
    for name in added:
        sys.modules.pop(name, None)


def st_lpips(net: str, **kw) -> LPIPS:
    """ST-LPIPS with a random trunk and unit heads (seeded): the mechanics, without the package."""
    torch.manual_seed(0)
    return LPIPS(net, variant="shift_tolerant", weights=None, heads=None, **kw)


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """``image`` (3, H, W) in [0, 1] through a JPEG of ``quality`` (PIL)."""
    import numpy as np
    from PIL import Image

    pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0)


def celeba_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Four real CelebA test-split pairs of 104x84 crops (4, 3, 104, 84) in [0, 1]: a face and its JPEG-q10 copy,
    a face and the same face shifted by (2, 1) pixels, a face and its JPEG-q30 copy, two different faces."""
    faces = [load_rgb(p) for p in celeba_test_files(4)]
    crop = [f[:, :104, :84] for f in faces]
    x = torch.stack(crop)
    y = torch.stack([jpeg(crop[0], 10), faces[1][:, 2:106, 1:85], jpeg(crop[2], 30), crop[0]])
    return x, y


# ------------------------------------------------------------------------------------- parity with the package


@needs_package
@pytest.mark.parametrize("net", NETS)
def test_values_maps_and_gradients_match_the_package_on_celeba(stlpips_pkg, net):
    """Values within 1e-5 relative and spatial maps within 1e-5 norm-wise in float32; input gradients within 1e-6
    norm-wise in float64 (both networks converted; the package's scaling constants are float32 numbers, ours
    the decimals it writes: 1e-7 apart). The package takes [-1, 1] images (normalize=True maps [0, 1] ones).

    Gradients are compared in float64 because in float32 they are ill-conditioned: the anti-aliased trunks'
    stride-1 max-pools meet exact ties in flat regions of 8-bit images, and which tied input gets the gradient
    follows the last bit of the convolutions (the package's own float32 gradient moves by ~1e-2 norm-wise under
    1e-7 input noise), so a float32 comparison would test the CPU's convolution kernels, not the metric."""
    x, y = celeba_pairs()
    ref = stlpips_pkg.LPIPS(net=net, variant="shift_tolerant", verbose=False)
    ours = LPIPS(net, variant="shift_tolerant")
    with torch.no_grad():
        expected = ref(x, y, normalize=True).flatten()
        got = ours(x, y)
    assert got.shape == (4,) and relative(got, expected) <= 1e-5
    # the pairs mean what they say: JPEG-q10 is further than JPEG-q30, and another face further still
    assert got[2] < got[0] < got[3]
    ref.spatial = True  # the package's forward reads it at each call
    with torch.no_grad():
        maps = LPIPS(net, variant="shift_tolerant", spatial=True)(x, y)
        assert maps.shape == (4, 1, 104, 84)
        assert_close(maps, ref(x, y, normalize=True), rtol=1e-5, atol=0)
    ref.spatial = False
    x64, y64 = x[:2, :, 28:76, 22:62].double(), y[:2, :, 28:76, 22:62].double()  # 48x40: float64 is slow
    xr, xo = x64.clone().requires_grad_(), x64.clone().requires_grad_()
    (grad_ref,) = torch.autograd.grad(ref.double()(xr, y64, normalize=True).sum(), xr)
    (grad_ours,) = torch.autograd.grad(ours.double()(xo, y64).sum(), xo)
    assert ((grad_ours - grad_ref).norm() / grad_ref.norm()).item() <= 1e-6


@needs_package
def test_blurpool_is_the_packages_downsample(stlpips_pkg):
    """BlurPool2d equals the package's ``Downsample(filt_size=3, stride=2, pad_more=True)`` exactly (float64),
    on even and odd sizes down to the smallest its reflection padding takes (3)."""
    from stlpips_pytorch.models_lpf.downsample import Downsample

    g = torch.Generator().manual_seed(0)
    ours, ref = BlurPool2d(5), Downsample(filt_size=3, stride=2, channels=5, pad_more=True).double()
    for h, w in ((3, 3), (8, 9), (17, 12)):
        x = torch.randn(2, 5, h, w, generator=g, dtype=torch.float64)
        out = ours(x)
        assert torch.equal(out, ref(x))
        assert out.shape[-2:] == (ours.output_size(h), ours.output_size(w))


# --------------------------------------------------------------------------------- weights: offline, checked


@needs_package
@pytest.mark.parametrize("net", NETS)
def test_weights_are_found_offline_checked_converted_and_cached(home, net):
    """Trunk and heads come from the one file of the wheel, found through its metadata; the cached tensors are
    the package's (the trunk under its own module indices, the heads as LPIPS' ``head{k}``)."""
    backbone = STLPIPS_NETS[net][0]
    trunk, heads = get_weights(f"{backbone}.stlpips"), get_weights(f"stlpips-{net}")
    assert heads.key == f"stlpips-{net}.vST0.0" and perceptloss.list_weights(backbone) == ["stlpips"]
    source = find_source(trunk)
    assert source == find_source(heads) and source.name == f"{net}_shift_tolerant.pth"
    assert "site-packages" in str(source) or "dist-packages" in str(source)
    package = torch.load(source, map_location="cpu", weights_only=True)
    state = resolve(trunk)
    assert cache_path(trunk).is_file() and cache_path(trunk).with_name(cache_path(trunk).name + ".sha256").is_file()
    expected = {k.split(".", 2)[2]: v for k, v in package.items() if k.startswith("net.") and not k.endswith(".filt")}
    assert sorted(state) == sorted(f"features.{k}" for k in expected)
    assert all(torch.equal(state[f"features.{k}"], v) for k, v in expected.items())
    head_state = resolve(heads)
    assert all(torch.equal(head_state[f"head{k}"], package[f"lin{k}.model.1.weight"].flatten()) for k in range(5))
    loss = LPIPS(net, variant="shift_tolerant")
    assert all(torch.equal(a, head_state[f"head{k}"]) for k, a in enumerate(loss.heads))


@needs_package
def test_the_command_line_fetches_lists_and_verifies_them(home, capsys):
    for argv in (["fetch", "stlpips-alex"], ["fetch", "alexnet_shift_tolerant.stlpips"]):
        assert cli(argv) == 0, argv
        assert "sha256" in capsys.readouterr().out
    assert cli(["weights", "stlpips"]) == 0
    out = capsys.readouterr().out
    assert "stlpips-alex.vST0.0" in out and "stlpips-vgg.vST0.0" in out
    assert cli(["verify"]) == 0
    assert cli(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("alexnet_shift_tolerant", "vgg16_shift_tolerant", "stlpips-alex", "stlpips-vgg"):
        assert name in out, name


@needs_package
def test_the_package_file_passed_directly_under_any_name(tmp_path):
    """weights= and heads= take the package's .pth itself, also renamed (known by its sha256): the same tensors,
    so the same signature digests and values as the catalogue's entries."""
    source = find_source(get_weights("alexnet_shift_tolerant.stlpips"))
    renamed = tmp_path / "my-stlpips.pth"
    shutil.copy(source, renamed)
    x, y = celeba_pairs()
    entry = LPIPS("alex", variant="shift_tolerant")
    with torch.no_grad():
        expected = entry(x, y)
        for path in (source, renamed):
            loss = LPIPS("alex", variant="shift_tolerant", weights=path, heads=path)
            assert torch.equal(loss(x, y), expected)
            fields = parse_signature(loss.signature)
            entry_fields = parse_signature(entry.signature)
            assert loss.weights_source == f"file:{path.name}" and fields == entry_fields  # one signature
            assert fields["sha256"] == entry_fields["sha256"] and fields["heads_sha256"] == entry_fields["heads_sha256"]
    # the trunk of that file is for the anti-aliased AlexNet, not torchvision's
    with pytest.raises(perceptloss.weights.WeightsFileError, match="alexnet_shift_tolerant"):
        perceptloss.FeatureLoss("alexnet", ["relu1"], weights=renamed)
    loss = perceptloss.FeatureLoss("alexnet_shift_tolerant", ["relu1", "relu3"], weights=renamed)
    assert loss.preprocess.norm.name == "lpips"  # its provenance gives LPIPS' scaling layer


def test_without_the_package_the_error_says_what_to_install(home, monkeypatch):
    real = importlib.metadata.distribution

    def distribution(name):
        if name == "stlpips-pytorch":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(WeightsNotFoundError, match=r"pip install stlpips-pytorch==0\.0\.2 --no-deps"):
        LPIPS("vgg", variant="shift_tolerant")
    with pytest.raises(WeightsNotFoundError, match=r"stlpips-alex\.vST0\.0.*\n.*pip install stlpips-pytorch"):
        LPIPS("alex", variant="shift_tolerant", weights=None)


def test_a_file_that_is_not_an_stlpips_trunk_is_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"net.slice1.1.filt": torch.ones(64, 1, 3, 3)}, bad)
    with pytest.raises(ValueError, match="binomial blur filter"):
        convert_stlpips_trunk(bad)
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, bad)
    with pytest.raises(ValueError, match="holds no ST-LPIPS trunk"):
        convert_stlpips_trunk(bad)


# ------------------------------------------------------------------------------------- trunks and arguments


def test_the_trunks_and_their_sizes():
    assert perceptloss.list_layers("alexnet_shift_tolerant") == ALEXNET_ST_LAYERS
    assert perceptloss.list_layers("vgg16_shift_tolerant") == VGG16_ST_LAYERS
    assert VGG16_ST_LAYERS[4:6] == ("pool1", "pool1_down")
    window = binomial_window(3)
    assert torch.equal(window * 16, torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float64))
    # the parameters carry the package's module indices (conv1 ... conv5 of AlexNet at 0, 5, 9, 11, 13)
    net = perceptloss.create_backbone("alexnet_shift_tolerant", ["relu5"], weights=None)[0]
    assert sorted({k.split(".")[1] for k in net.weight_tensors()}, key=int) == ["0", "5", "9", "11", "13"]
    # a constant image stays constant through a BlurPool (the filter sums to 1; reflection keeps the border)
    assert torch.allclose(BlurPool2d(2)(torch.full((1, 2, 7, 6), 0.3)), torch.tensor(0.3))
    loss = st_lpips("alex")
    assert loss.net.min_input_sizes()["relu5"] == (21, 21)
    with pytest.raises(perceptloss.ImageTooSmallError, match="21x21"):
        loss(torch.rand(1, 3, 20, 40), torch.rand(1, 3, 20, 40))
    assert loss(torch.rand(1, 3, 21, 21), torch.rand(1, 3, 21, 21)).shape == (1,)


@pytest.mark.parametrize("kw, text", [
    (dict(net="squeeze"), "'alex' or 'vgg' only"),
    (dict(net="alex", version="0.0"), "built on LPIPS v0.1"),
    (dict(net="alex", variant="antialiased"), "variant must be None or 'shift_tolerant'"),
])
def test_bad_arguments(kw, text):
    kw.setdefault("variant", "shift_tolerant")
    with pytest.raises(ValueError, match=text):
        LPIPS(weights=None, heads=None, **kw)


# ---------------------------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("spatial", [False, True])
def test_tiled_equals_whole(spatial):
    """The whole ST-LPIPS AlexNet (three BlurPools, reflection padding at the image border) tiled in crops of
    104 pixels: its values or maps and (values) its input gradient, to 1e-5 norm-wise in float32."""
    loss = st_lpips("alex", spatial=spatial)
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(1, 3, 120, 110, generator=g) for _ in range(2))
    xa, xb = x.clone().requires_grad_(not spatial), x.clone().requires_grad_(not spatial)
    whole, got = loss(xa, y), tiled(loss, tile=104)(xb, y)
    assert got.shape == whole.shape
    assert_close(got, whole, rtol=1e-5, atol=0)
    if not spatial:
        whole.sum().backward()
        got.sum().backward()
        assert_close(xb.grad, xa.grad, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backbone, layers", [
    ("alexnet_shift_tolerant", ["relu1", "relu2"]),
    ("vgg16_shift_tolerant", ["relu1_2", "relu2_2", "relu3_3"]),
])
def test_tiled_trunks_float64(backbone, layers):
    """Both anti-aliased trunks' geometry (stride-1 max-pools, BlurPools and their reflection padding) tiles
    exactly, to 1e-12 relative in float64; shallow layers keep it fast (the whole ST-LPIPS VGG needs tiles of
    234 pixels)."""
    torch.manual_seed(0)
    loss = perceptloss.FeatureLoss(backbone, layers, weights=None, reduction="none").double()
    g = torch.Generator().manual_seed(1)
    x, y = (torch.rand(1, 3, 80, 70, generator=g, dtype=torch.float64) for _ in range(2))
    assert_close(tiled(loss, tile=64)(x, y), loss(x, y), rtol=1e-12, atol=0)


def test_volume_loss_is_the_mean_over_slices():
    loss = st_lpips("alex").double()
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(1, 3, 24, 22, 23, generator=g, dtype=torch.float64) for _ in range(2))
    got = VolumeLoss(loss, axes=(2,), stride=4)(x, y)
    expected = torch.stack([loss(x[:, :, d], y[:, :, d]) for d in range(0, 24, 4)]).mean()
    assert_close(got, expected, rtol=1e-12, atol=0)


def test_grey_images_with_a_channel_policy():
    loss = st_lpips("alex", channels="replicate")
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(2, 1, 40, 40, generator=g) for _ in range(2))
    assert_close(loss(x, y), st_lpips("alex")(x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="channels"):
        st_lpips("alex")(x, y)


def test_signature_names_the_variant_and_the_weights():
    loss = st_lpips("vgg")
    fields = parse_signature(loss.signature)
    assert fields["metric"] == "LPIPS" and fields["net"] == "vgg" and fields["variant"] == "shift_tolerant"
    assert loss.weights_source == "random" and fields["norm"] == "imagenet"  # LPIPS' scaling layer: ImageNet's values
    plain = parse_signature(LPIPS("vgg", weights=None, heads=None).signature)
    assert "variant" not in plain  # LPIPS' own signatures are as they were
    if _installed():
        metric = create_metric("stlpips-alex")
        assert metric.weights_source == "alexnet_shift_tolerant.stlpips"
        assert parse_signature(metric.signature)["variant"] == "shift_tolerant"


def test_dtypes_and_checkpoint():
    """float64 follows .double(); bfloat16 runs the trunk in 16 bits near float32; checkpoint=True gives the same
    values and input gradient (float64: exactly the same computation)."""
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(2, 3, 40, 44, generator=g) for _ in range(2))
    f32 = st_lpips("alex")(x, y)
    f64 = st_lpips("alex").double()(x.double(), y.double())
    assert f64.dtype == torch.float64 and relative(f64.float(), f32) <= 1e-5
    bf16 = st_lpips("alex", dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and relative(bf16(x, y), f32) <= 0.1
    plain, ckpt = st_lpips("alex").double(), st_lpips("alex", checkpoint=True).double()
    xa, xb = x.double().requires_grad_(), x.double().requires_grad_()
    a, b = plain(xa, y.double()), ckpt(xb, y.double())
    assert torch.equal(a, b)
    a.sum().backward()
    b.sum().backward()
    assert torch.equal(xa.grad, xb.grad)


def test_compile_fullgraph():
    """One graph through the anti-aliased trunk (reflection padding, constant blur filters) and the heads
    (aot_eager: the graph and its values, without inductor's C++ compiles)."""
    loss = st_lpips("alex", reduction="mean")
    x, y = torch.rand(2, 3, 48, 48, requires_grad=True), torch.rand(2, 3, 48, 48)
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")(x, y)
    assert_close(compiled, loss(x, y), rtol=1e-5, atol=0)
    compiled.backward()
    assert torch.isfinite(x.grad).all()


def test_perceptual_metric_accumulates():
    pytest.importorskip("torchmetrics")
    from perceptloss.metric import PerceptualMetric

    loss = st_lpips("alex")
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(5, 3, 32, 32, generator=g) for _ in range(2))
    metric = PerceptualMetric(loss, per_sample=True)
    metric.update(x[:2], y[:2])
    metric.update(x[2:], y[2:])
    with torch.no_grad():
        whole = loss(x, y)
    assert relative(metric.values(), whole) <= 1e-6 and metric.signature == loss.signature


@needs_package
def test_score_command_line_is_create_metric(tmp_path, capsys):
    """``perceptloss score --metric stlpips-alex --metric stlpips-vgg`` on real CelebA crops: create_metric's
    signature and values; JPEG-q10 copies score worse than JPEG-q60 ones."""
    import json

    from .score_images import make_folders, load_rgb, stems

    folders = make_folders(tmp_path / "images", count=3)
    means = {}
    for name in ("jpeg10", "jpeg60"):
        out = tmp_path / f"{name}.json"
        code = cli(["score", str(folders["ref"]), str(folders[name]), "--metric", "stlpips-alex", "--metric",
                    "stlpips-vgg", "--dtype", "float32", "--workers", "0", "--quiet", "--json", str(out)])
        assert code == 0, capsys.readouterr().err
        means[name] = json.loads(out.read_text())["metrics"]
    keys = stems(folders["ref"])
    ref = torch.stack([load_rgb(folders["ref"] / f"{k}.png") for k in keys])
    dist = torch.stack([load_rgb(folders["jpeg10"] / f"{k}.jpg") for k in keys])
    for name in ("stlpips-alex", "stlpips-vgg"):
        metric = create_metric(name)
        assert isinstance(metric, LPIPS) and metric.variant == "shift_tolerant" and metric.reduction == "none"
        summary = means["jpeg10"][name]
        assert summary["signature"] == metric.signature and summary["n"] == 3
        with torch.no_grad():
            assert summary["mean"] == pytest.approx(metric(dist, ref).mean().item(), rel=1e-5)
        assert summary["mean"] > means["jpeg60"][name]["mean"] > 0
