"""FeatureLoss against an independent eager reference built from torchvision's VGG19 with the same weights."""
import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

import perceptloss
from perceptloss import FeatureLoss
from perceptloss.backbones.vgg import VGG19_CAFFE
from perceptloss.weights import resolve
from .helpers import assert_close

# torchvision VGG19 `features` indices of the layers used below.
TV_INDEX = {"conv1_1": 0, "relu1_1": 1, "relu2_1": 6, "conv3_1": 10, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29, "pool5": 36}


def caffe_reference(images01: torch.Tensor) -> dict[int, torch.Tensor]:
    """Every activation of the trunk computed by hand, by ``features`` index: torchvision's VGG19 layers + the
    Caffe weights, BGR 0-255 minus mean pixel."""
    net = make_layers(cfgs["E"]).eval()  # torchvision.models.vgg19().features, without building the classifier
    net.load_state_dict({k[len("features."):]: v for k, v in resolve(VGG19_CAFFE).items()})
    bgr = images01.flip(1) * 255.0 - torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1)
    feats = {}
    x = bgr
    with torch.no_grad():
        for i, m in enumerate(net):
            if isinstance(m, torch.nn.ReLU):
                m = torch.nn.ReLU(inplace=False)
            x = m(x)
            feats[i] = x
    return feats


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 48, 48, generator=g), torch.rand(3, 3, 48, 48, generator=g)


@pytest.fixture(scope="module")
def reference_features(images, has_caffe_weights):
    """The hand-computed activations of both images (once for the module's tests)."""
    if not has_caffe_weights:
        pytest.skip("the VGG19 Caffe weights are not available")
    return tuple(caffe_reference(im) for im in images)


@pytest.mark.parametrize("fused", [False, None])
@pytest.mark.parametrize("layers", [["relu1_1", "relu2_1", "relu3_1"], ["relu3_1", "relu4_1", "relu5_1"], ["conv1_1", "conv3_1", "pool5"]])
def test_matches_torchvision_reference(caffe_weights, images, reference_features, layers, fused):
    x, y = images
    w = [0.5, 1.0, 2.0]
    loss = FeatureLoss("vgg19", layers, layer_weights=w, weights=caffe_weights, fused=fused)
    fx, fy = reference_features
    expected = torch.stack(
        [wl * ((fx[TV_INDEX[n]] - fy[TV_INDEX[n]]) ** 2).flatten(1).mean(1) for n, wl in zip(layers, w)], dim=1
    )
    got = loss.per_layer(x, y)
    assert got.shape == (3, 3) and got.dtype == torch.float32
    assert_close(got, expected, rtol=1e-4, atol=1e-3)
    assert_close(loss(x, y), expected.sum(1).mean(), rtol=1e-4, atol=1e-3)
    terms = loss.per_layer_dict(x, y)
    assert list(terms) == layers
    assert_close(terms[layers[1]], expected[:, 1], rtol=1e-4, atol=1e-3)


def test_presets_and_reductions(caffe_weights, images):
    x, y = images
    per_sample = FeatureLoss("vgg19", "dfc123", reduction="none").forward(x, y)
    assert per_sample.shape == (3,)
    assert FeatureLoss("vgg19", "dfc123").layers == ("relu1_1", "relu2_1", "relu3_1")
    assert FeatureLoss("vgg19", "dfc345").layers == ("relu3_1", "relu4_1", "relu5_1")
    assert_close(FeatureLoss("vgg19", "dfc123", reduction="sum")(x, y), per_sample.sum())
    assert_close(FeatureLoss("vgg19", "dfc123")(x, y), per_sample.mean())
    assert perceptloss.registry.PRESETS["lpips"] == ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def test_identical_images_give_zero(caffe_weights, images):
    x, _ = images
    assert FeatureLoss("vgg19", "dfc345")(x, x).item() == 0.0


def test_input_range_minus_one_one_is_equivalent(caffe_weights, images):
    x, y = images
    a = FeatureLoss("vgg19", "dfc123")(x, y)
    b = FeatureLoss("vgg19", "dfc123", input_range=(-1, 1))(x * 2 - 1, y * 2 - 1)
    assert_close(a, b, rtol=1e-4, atol=1e-2)


def test_real_weights_separate_similar_from_dissimilar_images(caffe_weights):
    """Pretrained features: a slightly shifted image is closer than an unrelated one."""
    g = torch.Generator().manual_seed(1)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=64, mode="bilinear")
    shifted = torch.roll(base, 1, dims=3)
    other = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=64, mode="bilinear")
    loss = FeatureLoss("vgg19", "dfc345")
    assert loss(base, shifted) < loss(base, other)


def test_channels_last_and_bf16_autocast(caffe_weights, images):
    x, y = images
    loss = FeatureLoss("vgg19", "dfc123")
    ref = loss.per_layer(x, y)
    cl = loss.to(memory_format=torch.channels_last).per_layer(
        x.to(memory_format=torch.channels_last), y.to(memory_format=torch.channels_last)
    )
    assert_close(cl, ref, rtol=1e-4, atol=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss.per_layer(x, y)
    assert low.dtype == torch.float32
    assert_close(low, ref, rtol=0.1, atol=1.0)
