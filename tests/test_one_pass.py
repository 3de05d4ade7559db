"""Evaluation runs input and target through the network as one batch; training keeps the target's own pass."""
import pytest
import torch

import perceptloss
from perceptloss import LPIPS, FeatureLoss

from .helpers import TinyNet, relative, tiny_loss


def counted(loss):
    """The loss and a list that gets the batch size of every call of its network's first convolution."""
    calls = []
    first = next(m for m in loss.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    return loss, calls


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "plain"])
def test_one_network_call_on_both_images_when_no_gradient_is_asked(mode):
    loss, calls = counted(tiny_loss(TinyNet().double(), reduction="none"))
    x, y = torch.rand(3, 3, 16, 16, dtype=torch.float64), torch.rand(3, 3, 16, 16, dtype=torch.float64)
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
               "plain": torch.enable_grad}[mode]
    with context():
        joint = loss(x, y)
    assert calls == [6]
    calls.clear()
    separate = loss(x.clone().requires_grad_(), y)  # a gradient asked: input and target in passes of their own
    assert calls == [3, 3]
    # float64: the same per-image computation, whatever the batch it runs in
    assert relative(joint, separate.detach()) <= 1e-12


def test_values_equal_in_float64_for_every_loss_form():
    """FeatureLoss, LPIPS (heads), a spatial LPIPS and a Gram style loss: one pass equals two, in float64."""
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.rand(2, 3, 32, 32, dtype=torch.float64)
    losses = [FeatureLoss("vgg16", ["relu1_2", "relu2_2"], weights=None, reduction="none", dtype=torch.float64),
              LPIPS("alex", weights=None, dtype=torch.float64),
              LPIPS("alex", weights=None, spatial=True, dtype=torch.float64),
              perceptloss.StyleLoss("vgg16", ["relu1_2", "relu2_2"], weights=None, reduction="none",
                                    dtype=torch.float64)]
    for loss in losses:
        with torch.no_grad():
            joint = loss(x, y)
        separate = loss(x.clone().requires_grad_(), y).detach()
        assert joint.shape == separate.shape
        assert relative(joint, separate) <= 1e-12, type(loss).__name__

