"""FDL (perceptloss.fdl): parity with the official fdl-pytorch 1.0 (same random trunk, same projections), the
seeded projections (buffers, named in the signature), the 80-pixel floor, tiling refused, and the loss contract
(set_target, channels, VolumeLoss, PerceptualMetric, score, dtype, checkpoint, torch.compile).

FDL runs VGG19 to relu5_4 on images of at least 80 x 80: the contract tests share one random-trunk loss with 16
projections per layer (the count changes how many directions are drawn, not how they are used)."""
import json
import types
from unittest import mock

import numpy as np
import pytest
import torch

import perceptloss
from perceptloss import FDL, ImageTooSmallError, VolumeLoss, tiled
from perceptloss.__main__ import main as cli
from perceptloss._signature import parse_signature
from perceptloss.fdl import FDL_CHANNELS, FDL_SCALES, FrequencyDistribution, unit_projections
from .helpers import assert_close, assert_equal

SIDE = 80  # the smallest image FDL takes (5x5 patches of relu5_4, 1/16 of the image)


def official_fdl():
    """The official FDL_pytorch package, imported with its class body's ``.cuda()`` calls made no-ops (it builds
    two CUDA tensors at import); skipped when it is not installed."""
    try:
        with mock.patch.object(torch.Tensor, "cuda", lambda self, *args, **kwargs: self):
            from FDL_pytorch import FDL as official
            from FDL_pytorch import models
    except ImportError:
        pytest.skip("the parity tests need the official code: python -m pip install --no-deps fdl-pytorch==1.0")
    return official, models


def official_loss(projections, phase_weight):
    """The official FDL_loss on a random VGG19 (its torchvision call would download the ImageNet weights)."""
    official, models = official_fdl()
    import torchvision

    random_vgg19 = types.SimpleNamespace(vgg19=lambda pretrained=True: torchvision.models.vgg19(weights=None))
    with mock.patch.object(models, "tv", random_vgg19):
        return official.FDL_loss(num_proj=projections, phase_weight=phase_weight).eval()


def with_same_trunk_and_projections(ref, ours):
    """Copy the official loss's trunk into ``ours`` and our projections into the official loss."""
    state = {"features." + k.split(".", 2)[2]: v for k, v in ref.state_dict().items() if k.startswith("model.stage")}
    ours.net.load_trunk_state_dict(state)
    for k, p in enumerate(ours.criterion.projection_tensors):
        getattr(ref, f"rand_{k}").data = p.clone()


@pytest.fixture(scope="module")
def pair():
    """The official FDL_loss (32 projections, phase weight 0.7) and ours on the same trunk and projections. Ours
    takes the official code's own normalised images (identity normalisation, contiguous layout), so that both run
    the same operations on the same features: the comparison is then of the FFT, projection, sort and reduction."""
    ref = official_loss(32, 0.7)
    ours = FDL(weights=None, projections=32, phase_weight=0.7, seed=3, normalization="identity", check_range="off",
               memory_format="contiguous")
    with_same_trunk_and_projections(ref, ours)
    return ref, ours


def values_and_gradients(ref, ours, dtype):
    ref, ours = ref.to(dtype), ours.to(dtype)
    for k, p in enumerate(ours.criterion.projection_tensors):
        getattr(ref, f"rand_{k}").data = p.clone()
    # the official mean/std in the dtype exactly (.to(float64) would keep float32's rounding of 0.485, ...)
    ref.model.mean = torch.tensor([0.485, 0.456, 0.406], dtype=dtype).view(1, 3, 1, 1)
    ref.model.std = torch.tensor([0.229, 0.224, 0.225], dtype=dtype).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, SIDE, SIDE + 8, generator=g, dtype=dtype)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=dtype)).clamp(0, 1)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = ref(xr, y)
    expected.backward()
    normalised = lambda t: (t - ref.model.mean) / ref.model.std  # noqa: E731 - the official code's preprocessing
    value = ours(normalised(xo), normalised(y))
    value.backward()
    return (value, expected), (xo.grad, xr.grad)


def test_matches_the_official_code_in_float64(pair):
    """Values and gradients equal to float64 rounding for a batch of two 80x88 images (measured: the value 1e-16
    relative, the gradient bit for bit)."""
    (value, expected), (grad, expected_grad) = values_and_gradients(*pair, torch.float64)
    assert_close(value, expected, rtol=1e-12, atol=0)
    assert_close(grad, expected_grad, rtol=1e-9, atol=1e-13 * expected_grad.abs().max().item())


def test_matches_the_official_code_in_float32(pair):
    """float32, norm-wise to 1e-5 (measured: value and gradient bit for bit; the same operations on the same
    features, in another order only in the final means)."""
    (value, expected), (grad, expected_grad) = values_and_gradients(*pair, torch.float32)
    assert_close(value, expected)
    assert_close(grad, expected_grad)


def test_with_its_own_imagenet_preprocessing_the_value_agrees(pair):
    """End to end (our x * a + b preprocessing and layout): the features differ from the official code's by float32
    rounding. FDL's phase term is not continuous in its input: a phase wraps from pi to -pi, and the phase of a bin
    of (near) zero or real negative value is set by rounding. The official loss itself moves by ~1e-4 (relative)
    when its input is perturbed by 1e-7 (measured on this random trunk), so the value is compared to 1e-2."""
    ref, _ = pair
    ref = ref.float()
    ours = FDL(weights=None, projections=32, phase_weight=0.7, seed=3, normalization="imagenet")
    with_same_trunk_and_projections(ref, ours)
    ref.model.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    ref.model.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(1, 3, SIDE, SIDE, generator=g), torch.rand(1, 3, SIDE, SIDE, generator=g)
    with torch.no_grad():
        assert_close(ours(x, y), ref(x, y), rtol=1e-2)


def test_the_projections_are_the_official_draws_after_manual_seed():
    """``torch.manual_seed(seed)`` then the official code's ``torch.randn`` per layer, divided by their norms."""
    torch.manual_seed(5)
    expected = [torch.randn(8, c, 5, 5) for c in FDL_CHANNELS]
    expected = [r / r.view(r.shape[0], -1).norm(dim=1).view(-1, 1, 1, 1) for r in expected]
    criterion = FrequencyDistribution(FDL_CHANNELS, projections=8, seed=5, scales=FDL_SCALES)
    for p, e in zip(criterion.projection_tensors, expected):
        assert p.dtype == torch.float32 and p.shape == e.shape
        assert_close(p, e, rtol=1e-6)
        assert_close(p.double().flatten(1).norm(dim=1), torch.ones(8, dtype=torch.float64), rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------ the projections


@pytest.fixture(scope="module")
def loss():
    """FDL in float64 on a random trunk, 16 projections per layer."""
    torch.manual_seed(0)
    return FDL(weights=None, projections=16, reduction="none").double()


@pytest.fixture(scope="module")
def amplitude(loss):
    """``loss``'s amplitude term alone (phase_weight=0), for comparing two ways of computing one value.

    FDL's phase term is not continuous in the features: a phase wraps from pi to -pi, and where a bin is
    (analytically) real and negative, or its phase is otherwise exactly pi, the FFT's rounding decides between pi
    and -pi, even in float64 (a single-pixel feature map, common on a random trunk, has such bins: imaginary
    parts of -5e-20 in one batch, 0.0 in another). The official code's value moves the same way. Two ways of
    computing the loss that run other kernels (another batch size, a compiled graph) can therefore differ by up to
    ~1% on the full loss; the amplitude term is continuous and agrees to float64 rounding."""
    torch.manual_seed(0)
    term = FDL(weights=None, projections=16, reduction="none", phase_weight=0.0).double()
    term.net.load_trunk_state_dict(loss.net.weight_tensors())
    return term


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(2, 3, SIDE, SIDE, generator=g, dtype=torch.float64),
            torch.rand(2, 3, SIDE, SIDE, generator=g, dtype=torch.float64))


def test_projections_are_seeded_buffers_left_out_of_the_state_dict():
    a = FrequencyDistribution(FDL_CHANNELS, projections=4, seed=1, scales=FDL_SCALES)
    b = FrequencyDistribution(FDL_CHANNELS, projections=4, seed=1, scales=FDL_SCALES)
    c = FrequencyDistribution(FDL_CHANNELS, projections=4, seed=2, scales=FDL_SCALES)
    assert all(torch.equal(p, q) for p, q in zip(a.projection_tensors, b.projection_tensors))
    assert not torch.equal(a.projection0, c.projection0)
    assert [name for name, _ in a.named_buffers()] == [f"projection{k}" for k in range(5)]
    assert list(a.state_dict()) == [] and list(a.parameters()) == []
    # float64: drawn again and normalised in float64; 16 bits: kept float32 (the loss accumulates in float32)
    wide = a.double()
    assert all(torch.equal(p, q) for p, q in zip(wide.projection_tensors, unit_projections(
        FDL_CHANNELS, 4, 5, 1, torch.float64)))
    fresh = FrequencyDistribution(FDL_CHANNELS, projections=4, seed=1)
    half = b.half()
    assert all(p.dtype == torch.float32 and torch.equal(p, q) for p, q in zip(half.projection_tensors,
                                                                               fresh.projection_tensors))


def test_seed_and_count_are_in_the_signature():
    loss = FDL(weights=None, projections=8, seed=4)
    fields = parse_signature(loss.signature)
    assert fields["metric"] == "FDL" and fields["distance"] == "fdl" and loss.weights_source == "random"
    assert fields["projections"] == "8/seed=4" and fields["patch"] == "5/stride=1" and fields["phase_weight"] == "1"
    assert fields["layers"] == "relu1_2,relu2_2,relu3_4,relu4_4,relu5_4"
    other = parse_signature(FDL(weights=None, projections=8, seed=5, phase_weight=0.5).signature)
    assert other["projections"] == "8/seed=5" and other["phase_weight"] == "0.5"


@pytest.mark.parametrize("kwargs, match", [
    ({"projections": 0}, "projections must be an integer >= 1"),
    ({"patch_size": 2.5}, "patch_size must be an integer >= 1"),
    ({"stride": True}, "stride must be an integer >= 1"),
    ({"phase_weight": -1.0}, "phase_weight must be >= 0"),
    ({"phase_weight": float("nan")}, "phase_weight must be a finite number"),
    ({"seed": -1}, "seed must be an integer >= 0"),
])
def test_bad_arguments_are_refused_before_the_network_is_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FDL(weights=None, **kwargs)


# ------------------------------------------------------------------------------------------ size, tiling


@pytest.mark.parametrize("shape", [(79, 96), (96, 79), (64, 64)])
def test_images_below_80_pixels_raise_image_too_small(loss, shape):
    with pytest.raises(ImageTooSmallError, match=r"too small for FDL.*at least 80x80") as caught:
        loss(torch.rand(1, 3, *shape), torch.rand(1, 3, *shape))
    assert caught.value.size == shape and caught.value.min_size == (80, 80)


def test_the_floor_follows_the_patch_size():
    criterion = FrequencyDistribution(FDL_CHANNELS, projections=1, patch_size=3, scales=FDL_SCALES)
    criterion.check_size((48, 48))
    with pytest.raises(ImageTooSmallError, match="at least 48x48") as caught:
        criterion.check_size((48, 47))
    assert caught.value.min_size == (48, 48)


def test_tiled_refuses_with_the_reason(loss):
    with pytest.raises(ValueError, match="cannot tile FDL: its FFT and sorts run over each layer's whole feature map"):
        tiled(loss, tile=128)


# ------------------------------------------------------------------------------------------ the contract


def test_identical_images_give_zero_and_the_loss_is_symmetric(loss, images):
    x, y = images
    with torch.no_grad():
        assert_equal(loss(x, x), torch.zeros(2, dtype=torch.float64))
        value = loss(x, y)
        assert_equal(value, loss(y, x))
        assert (value > 0).all()


def test_set_target_keeps_the_sorted_projections(loss, images):
    x, y = images
    with torch.no_grad():
        pairwise = loss(x, y)
        loss.set_target(y)
        try:
            assert [tuple(t.shape[:3]) for t in loss.fixed_representation] == [(2, 2, 16)] * 5
            assert_equal(loss(x), pairwise)
            loss.set_target(torch.rand(1, 3, 96, 96, dtype=torch.float64))
            with pytest.raises(ValueError, match="use images of the target's size"):
                loss(x)
        finally:
            loss.set_target(None)


def test_one_fixed_target_is_compared_with_every_input(amplitude, images):
    x, y = images
    with torch.no_grad():
        expected = torch.cat([amplitude(x[:1], y[:1]), amplitude(x[1:], y[:1])])
        amplitude.set_target(y[:1])
        try:
            assert_close(amplitude(x), expected, rtol=1e-9, atol=0)
        finally:
            amplitude.set_target(None)


def test_channel_policies(images):
    torch.manual_seed(0)
    grey = FDL(weights=None, projections=16, reduction="none", channels="replicate")
    rgb = FDL(weights=None, projections=16, reduction="none")
    rgb.net.load_trunk_state_dict(grey.net.weight_tensors())
    x, y = (t[:, :1].float() for t in images)
    with torch.no_grad():
        assert_close(grey(x, y), rgb(x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)))


def test_volume_loss_is_the_mean_over_slices(amplitude):
    grey = FDL(weights=None, projections=16, reduction="none", channels="replicate", phase_weight=0.0).double()
    grey.net.load_trunk_state_dict(amplitude.net.weight_tensors())
    g = torch.Generator().manual_seed(3)
    x, y = (torch.rand(1, 1, 2, SIDE, SIDE, generator=g, dtype=torch.float64) for _ in range(2))
    with torch.no_grad():
        slices = torch.stack([grey(x[:, :, d], y[:, :, d]) for d in range(2)]).mean(0)
        assert_close(VolumeLoss(grey, axes=(2,), reduction="none")(x, y), slices, rtol=1e-9, atol=0)


def test_perceptual_metric_and_create_metric(loss, images):
    pytest.importorskip("torchmetrics")
    from perceptloss.metric import PerceptualMetric

    x, y = images
    metric = PerceptualMetric(loss, per_sample=True)
    metric.update(x, y)
    metric.update(y, x)
    with torch.no_grad():
        values = loss(x, y)
    assert_close(metric.values(), torch.cat([values, values]))
    assert_close(metric.compute(), values.mean())
    assert metric.signature == loss.signature
    built = perceptloss.create_metric("fdl", weights=None, projections=16)
    assert isinstance(built, FDL) and built.reduction == "none" and built.projections == 16
    assert "fdl" in perceptloss.list_metrics()


def test_score_cli_with_a_vgg19_file(tmp_path, capsys):
    """``perceptloss score --metric fdl``: the summary's signature and mean are create_metric's (a random VGG19
    saved under torchvision's file name, whose provenance gives the ImageNet preprocessing)."""
    import torchvision
    from PIL import Image
    from torchvision.models.vgg import cfgs, make_layers

    from .helpers import save_features_checkpoint, standin_entries

    torch.manual_seed(0)
    trunk = tmp_path / torchvision.models.VGG19_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    save_features_checkpoint(make_layers(cfgs["E"]), trunk)
    rng = np.random.default_rng(0)
    for side in ("ref", "dist"):
        (tmp_path / side).mkdir()
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(tmp_path / side / f"{k}.png")
    with standin_entries(trunk):  # a random stand-in under torchvision's name
        out = tmp_path / "summary.json"
        code = cli(["score", str(tmp_path / "ref"), str(tmp_path / "dist"), "--metric", "fdl", "--weights",
                    f"fdl={trunk}", "--dtype", "float32", "--workers", "0", "--quiet", "--json", str(out)])
        assert code == 0, capsys.readouterr().err
        summary = json.loads(out.read_text())["metrics"]["fdl"]
        metric = perceptloss.create_metric("fdl", weights=trunk)
        assert summary["signature"] == metric.signature and summary["n"] == 2
        assert "norm:imagenet" in metric.signature
        pixels = [torch.from_numpy(np.asarray(Image.open(tmp_path / side / f"{k}.png"), dtype=np.float32)
                                   .transpose(2, 0, 1) / 255.0) for side in ("ref", "dist") for k in range(2)]
        with torch.no_grad():
            values = metric(torch.stack(pixels[2:]), torch.stack(pixels[:2]))
        assert summary["mean"] == pytest.approx(values.mean().item(), rel=1e-5)


def test_list_names_the_metric(capsys):
    assert cli(["list"]) == 0
    assert "fdl " in capsys.readouterr().out


def test_float64_and_16_bit_networks_accumulate_wide(images):
    """float64 features give float64 terms, bfloat16 ones (dtype= or autocast) float32 terms. The values are compared
    on the amplitude term (phase_weight=0): the phase of a weak frequency bin is set by rounding, so the phase term
    of a float32 or bfloat16 network differs from float64's by a few percent on a random trunk."""
    x, y = (t.float() for t in images)
    torch.manual_seed(0)
    amplitude = FDL(weights=None, projections=16, reduction="none", phase_weight=0.0)
    trunk = amplitude.net.weight_tensors()
    with torch.no_grad():
        reference = amplitude.per_layer(x, y)
        wide = FDL(weights=None, projections=16, reduction="none", phase_weight=0.0).double()
        wide.net.load_trunk_state_dict(trunk)
        terms = wide.per_layer(x.double(), y.double())
        assert terms.dtype == torch.float64 and wide.criterion.projection0.dtype == torch.float64
        assert_close(terms.float(), reference, rtol=1e-4)
        bf16 = FDL(weights=None, projections=16, reduction="none", phase_weight=0.0, dtype=torch.bfloat16)
        bf16.net.load_trunk_state_dict(trunk)
        terms = bf16.per_layer(x, y)
        assert terms.dtype == torch.float32 and bf16.criterion.projection0.dtype == torch.float32
        assert_close(terms, reference, rtol=5e-2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = amplitude.per_layer(x, y)
        assert terms.dtype == torch.float32
        assert_close(terms, reference, rtol=5e-2)


def test_checkpoint_gives_the_same_value_and_gradient(loss, images):
    """The recomputed network gives the same features, so the full loss (phase too) agrees."""
    x, y = images
    saving = FDL(weights=None, projections=16, reduction="none", checkpoint=True).double()
    saving.net.load_trunk_state_dict(loss.net.weight_tensors())
    values, grads = [], []
    for model in (loss, saving):
        xg = x.clone().requires_grad_()
        values.append(model(xg, y))
        values[-1].sum().backward()
        grads.append(xg.grad)
    assert_close(values[1], values[0], rtol=1e-9, atol=0)
    assert_close(grads[1], grads[0], rtol=1e-7, atol=1e-12 * grads[0].abs().max().item())


def test_torch_compile_captures_the_whole_graph(loss, amplitude, images):
    """One graph (no break) for the FFT, angle, projections and sorts; values: the amplitude term to float64
    rounding, the full loss to 1e-2 (the phase's pi / -pi, see ``amplitude``)."""
    x, y = images
    with torch.no_grad():
        assert_close(torch.compile(amplitude, fullgraph=True, backend="aot_eager")(x, y), amplitude(x, y),
                     rtol=1e-9, atol=0)
        assert_close(torch.compile(loss, fullgraph=True, backend="aot_eager")(x, y), loss(x, y), rtol=1e-2, atol=0)


@pytest.mark.slow
def test_torch_compile_with_inductor(amplitude, images):
    x, y = images
    xg, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = amplitude(xg, y).sum()
    expected.backward()
    value = torch.compile(amplitude)(xc, y).sum()
    value.backward()
    assert_close(value, expected, rtol=1e-9, atol=0)
    assert_close(xc.grad, xg.grad, rtol=1e-6, atol=1e-12 * xg.grad.abs().max().item())
