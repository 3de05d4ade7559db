"""The output dtype rule (issue 35 item 13), the same for every built-in loss: a loss's values are in its own
dtype, whatever the images' dtype: float64 for a float64 loss, float32 for every other (a float32, bfloat16 or
float16 network, or autocast). Float64 images through a float32 loss used to give float32 for FeatureLoss and
LPIPS but float64 for DISTS (its image layer followed the images). Random trunks: nothing is downloaded."""
from __future__ import annotations

import warnings

import pytest
import torch

from perceptloss import DISTS, LPIPS, FeatureLoss, StyleLoss, VolumeLoss
from perceptloss.dists import DISTS_CHANNELS

LOSS_DTYPES = [torch.float32, torch.float64, torch.bfloat16]
IMAGE_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def alpha_beta(tmp_path_factory):
    """A valid DISTS α/β file (random non-negative weights): DISTS without the dists-pytorch package."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dists") / "alpha_beta.pt"
    total = sum(DISTS_CHANNELS)
    torch.save({"alpha": torch.rand(total), "beta": torch.rand(total)}, path)
    return path


def make(name: str, dtype: torch.dtype, alpha_beta) -> torch.nn.Module:
    options = {"reduction": "none", "dtype": dtype}
    if name == "FeatureLoss":
        return FeatureLoss("vgg16", ["relu1_2", "relu2_2"], weights=None, **options)
    if name == "StyleLoss":
        return StyleLoss("vgg16", ["relu1_2", "relu2_2"], weights=None, **options)
    if name == "LPIPS":
        return LPIPS("alex", weights=None, heads=None, **options)
    if name == "LPIPS-spatial":
        return LPIPS("alex", weights=None, heads=None, spatial=True, **options)
    if name == "DISTS":
        return DISTS(weights=None, alpha_beta=alpha_beta, **options)
    if name == "VolumeLoss":
        return VolumeLoss(FeatureLoss("vgg16", ["relu1_2"], weights=None, **options), axes=(2,), reduction="none")
    raise AssertionError(name)


@pytest.mark.parametrize("loss_dtype", LOSS_DTYPES, ids=str)
@pytest.mark.parametrize("name", ["FeatureLoss", "StyleLoss", "LPIPS", "LPIPS-spatial", "DISTS", "VolumeLoss"])
def test_every_loss_outputs_its_own_dtype_whatever_the_images(name, loss_dtype, alpha_beta):
    expected = torch.float64 if loss_dtype == torch.float64 else torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bfloat16 on a CPU without native support warns that it is slow
        loss = make(name, loss_dtype, alpha_beta)
        shape = (2, 3, 4, 40, 40) if name == "VolumeLoss" else (2, 3, 40, 40)
        gen = torch.Generator().manual_seed(0)
        x, y = torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)
        for image_dtype in IMAGE_DTYPES:
            with torch.no_grad():
                out = loss(x.to(image_dtype), y.to(image_dtype))
            assert out.dtype == expected, (name, loss_dtype, image_dtype, out.dtype)
            assert torch.isfinite(out).all()
        if loss_dtype == torch.float32 and name != "VolumeLoss":
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                assert loss(x.double(), y.double()).dtype == torch.float32

