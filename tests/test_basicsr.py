"""from_basicsr: BasicSR's PerceptualLoss (feature and style terms, l1/l2, range_norm, use_input_norm) against
its formulas written out on torchvision's VGG19 (random weights), and the option checks."""
import pytest
import torch
import torchvision

from perceptloss import StyleLoss
from perceptloss.backbones.vgg import vgg_layer_names
from perceptloss.basicsr import REAL_ESRGAN, from_basicsr
from .helpers import assert_close, save_features_checkpoint, standin_entries

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def _vgg19_file(tmp_path_factory):
    """A random torchvision VGG19 ``features`` checkpoint under torchvision's published file name."""
    torch.manual_seed(0)
    features = torchvision.models.vgg19(weights=None).features.eval()
    path = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
    save_features_checkpoint(features, path)
    return features, path


@pytest.fixture
def vgg19_file(_vgg19_file):
    """``_vgg19_file``, accepted under torchvision's names while a test runs (``standin_entries``)."""
    with standin_entries(*_vgg19_file[1:]):
        yield _vgg19_file


def basicsr_reference(features, options, x, gt):
    """BasicSR's PerceptualLoss.forward written out: features by name (cloned: torchvision's ReLUs are in
    place), criterion over whole tensors, Gram matrices F F^T / (C H W), weights, then the term weights."""
    o = {"use_input_norm": True, "range_norm": False, "perceptual_weight": 1.0, "style_weight": 0.0,
         "criterion": "l1", **options}
    names = vgg_layer_names("vgg19")
    wanted = o["layer_weights"]

    def extract(img):
        if o["range_norm"]:
            img = (img + 1) / 2
        if o["use_input_norm"]:
            img = (img - MEAN) / STD
        out = {}
        for name, module in zip(names, features):
            img = module(img)
            if name in wanted:
                out[name] = img.clone()
        return out

    crit = torch.nn.L1Loss() if o["criterion"] == "l1" else torch.nn.MSELoss()

    def gram(f):
        n, c, h, w = f.shape
        f = f.reshape(n, c, h * w)
        return f.bmm(f.transpose(1, 2)) / (c * h * w)

    fx = extract(x)
    with torch.no_grad():
        fg = extract(gt.detach())
    percep = sum(crit(fx[k], fg[k]) * w for k, w in wanted.items()) * o["perceptual_weight"]
    style = sum(crit(gram(fx[k]), gram(fg[k])) * w for k, w in wanted.items()) * o["style_weight"]
    return percep, style


def images(range_norm=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(2, 3, 40, 40, generator=g), torch.rand(2, 3, 40, 40, generator=g)
    return (2 * x - 1, 2 * y - 1) if range_norm else (x, y)


@pytest.mark.parametrize(
    "options",
    [
        REAL_ESRGAN,
        {"layer_weights": {"conv5_4": 1.0}, "criterion": "l2", "perceptual_weight": 0.5},
        {"layer_weights": {"relu1_1": 1.0, "relu2_1": 0.5, "conv3_1": 2.0}, "style_weight": 10.0, "criterion": "l1"},
        {"layer_weights": {"relu1_1": 1.0, "conv4_2": 0.3}, "style_weight": 3.0, "criterion": "l2", "range_norm": True},
        {"layer_weights": {"conv2_2": 1.0}, "use_input_norm": False, "style_weight": 1.0},
        {"layer_weights": {"conv2_2": 1.0, "pool3": 1.0}, "perceptual_weight": 0.0, "style_weight": 1.0},
    ],
)
def test_equals_basicsr_formulas(vgg19_file, options):
    features, path = vgg19_file
    loss = from_basicsr(options, weights=path)
    x, gt = images(options.get("range_norm", False))
    x = x.requires_grad_()
    percep, style = loss(x, gt)
    ref_x = x.detach().clone().requires_grad_()
    ref_p, ref_s = basicsr_reference(features, options, ref_x, gt)
    pw, sw = options.get("perceptual_weight", 1.0), options.get("style_weight", 0.0)
    assert (percep is None) == (pw == 0) and (style is None) == (sw == 0)
    total, ref_total = 0.0, 0.0
    if percep is not None:
        assert_close(percep, ref_p.detach(), rtol=1e-4, atol=1e-7)
        total, ref_total = total + percep, ref_total + ref_p
    if style is not None:
        assert_close(style, ref_s.detach(), rtol=1e-4, atol=1e-9)
        total, ref_total = total + style, ref_total + ref_s
    total.backward()
    ref_total.backward()
    assert ((x.grad - ref_x.grad).norm() / ref_x.grad.norm()).item() < 1e-4  # float32, 16 layers deep
    if style is not None:  # one network for both terms: the style term is a criterion on the same features
        assert sum(hasattr(m, "weight_tensors") for m in loss.modules()) == 1


def test_channel_policy_applies_to_both_terms(vgg19_file):
    """from_basicsr(..., channels=...) runs the loss's channel policy on both terms (issue: it was skipped)."""
    _, path = vgg19_file
    options = {"layer_weights": {"relu1_1": 1.0, "conv2_2": 0.5}, "style_weight": 2.0, "criterion": "l1"}
    grey = from_basicsr(options, weights=path, channels="replicate")
    rgb = from_basicsr(options, weights=path)
    x, gt = images()
    xg, gtg = x[:, :1], gt[:, :1]
    got = grey(xg, gtg)
    expected = rgb(xg.expand(-1, 3, -1, -1), gtg.expand(-1, 3, -1, -1))
    for a, b in zip(got, expected):
        assert_close(a, b, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="channel"):
        rgb(xg, gtg)


def test_style_loss_l1_is_the_mean_over_gram_entries(vgg19_file):
    _, path = vgg19_file
    loss = StyleLoss("vgg19", ["relu1_1", "relu2_1"], weights=path, normalization="imagenet", distance="l1",
                     layer_weights=[1.0, 2.0], reduction="none")
    x, y = images()
    gx = loss.representation(loss.features(x))
    gy = loss.representation(loss.features(y))
    expected = sum(w * (a - b).abs().mean(dim=(1, 2)) for w, a, b in zip([1.0, 2.0], gx, gy))
    assert_close(loss(x, y), expected)


def test_option_errors():
    with pytest.raises(ValueError, match="layer_weights"):
        from_basicsr({"vgg_type": "vgg19"}, weights=None)
    with pytest.raises(ValueError, match="unknown BasicSR PerceptualLoss options"):
        from_basicsr({"layer_weights": {"conv5_4": 1}, "norm_img": False}, weights=None)
    with pytest.raises(ValueError, match="'fro'"):
        from_basicsr({"layer_weights": {"conv5_4": 1}, "criterion": "fro"}, weights=None)
    with pytest.raises(ValueError, match="vgg_type"):
        from_basicsr({"layer_weights": {"conv5_4": 1}, "vgg_type": "vgg19_bn"}, weights=None)
    with pytest.raises(ValueError, match="at least one"):
        from_basicsr({"layer_weights": {"conv5_4": 1}, "perceptual_weight": 0}, weights=None)
