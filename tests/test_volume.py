"""VolumeLoss: equal to an explicit slice loop (values and gradients) for every chunk size, strides and axes;
checkpointed chunks bound the peak memory (measured in subprocesses)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from perceptloss import FeatureLoss
from perceptloss.volume import VolumeLoss, volume_slices
from .helpers import assert_close


@pytest.fixture(scope="module")
def loss2d():
    torch.manual_seed(0)
    return FeatureLoss("vgg16", ["relu1_2", "relu2_1"], weights=None, reduction="none")


@pytest.fixture(scope="module")
def loss64():
    torch.manual_seed(0)
    return FeatureLoss("vgg16", ["relu1_2", "relu2_1"], weights=None, reduction="none").double()


def volumes(shape=(2, 3, 5, 6, 7), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g).to(dtype), torch.rand(*shape, generator=g).to(dtype)


def explicit(loss2d, x, y, axes=(2, 3, 4), stride=1):
    """The reduction written out: per axis, the mean over slices of the 2D loss; then the mean over axes."""
    per_axis = []
    for axis in axes:
        values = []
        for s in range(0, x.shape[axis], stride):
            a, b = x.select(axis, s), y.select(axis, s)  # (N, C, ., .)
            values.append(loss2d(a, b))
        per_axis.append(torch.stack(values, dim=1).mean(dim=1))
    return torch.stack(per_axis, dim=1).mean(dim=1)


def test_slices_are_the_selected_planes():
    x, _ = volumes()
    s = volume_slices(x, 3, 1, 6, 2)  # H slices 1, 3, 5 of both samples
    assert s.shape == (6, 3, 5, 7)
    assert torch.equal(s[4], x[1, :, :, 3, :])


@pytest.mark.parametrize("chunk", [1, 4, 1000])
@pytest.mark.parametrize("stride, axes", [(1, (2, 3, 4)), (2, (3,)), (3, (4, 2))])
def test_equals_the_slice_loop(loss64, chunk, stride, axes):
    x, y = volumes(dtype=torch.float64)
    loss2d = loss64
    vol = VolumeLoss(loss2d, axes, stride=stride, chunk=chunk, reduction="none")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, expected = vol(xa, y), explicit(loss2d, xb, y, axes, stride)
    assert_close(got, expected)
    got.sum().backward()
    expected.sum().backward()
    assert_close(xa.grad, xb.grad)
    assert vol.per_axis(x, y).shape == (2, len(axes))


def test_reductions_without_checkpoint_and_no_grad(loss2d):
    x, y = volumes()
    per_sample = VolumeLoss(loss2d, reduction="none")(x, y)
    assert_close(VolumeLoss(loss2d)(x, y), per_sample.mean())
    assert_close(VolumeLoss(loss2d, reduction="sum")(x, y), per_sample.sum())
    xr = x.clone().requires_grad_()
    plain = VolumeLoss(loss2d, checkpoint=False, chunk=3)(xr, y)
    plain.backward()
    xc = x.clone().requires_grad_()
    VolumeLoss(loss2d, chunk=3)(xc, y).backward()
    assert_close(xr.grad, xc.grad)
    with torch.no_grad():
        assert_close(VolumeLoss(loss2d, chunk=2)(x, y), per_sample.mean())


def test_errors(loss2d):
    x, y = volumes()
    with pytest.raises(ValueError, match="reduction='none'"):
        VolumeLoss(FeatureLoss("vgg16", ["relu1_2"], weights=None))
    with pytest.raises(ValueError, match="axes must be"):
        VolumeLoss(loss2d, axes=(1,))
    with pytest.raises(ValueError, match="stride must be"):
        VolumeLoss(loss2d, stride=0)
    with pytest.raises(ValueError, match="chunk must be"):
        VolumeLoss(loss2d, chunk=0)
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        VolumeLoss(loss2d)(x[0], y[0])
    with pytest.raises(ValueError, match="shapes differ"):
        VolumeLoss(loss2d)(x, y[:, :, :4])
    thin_x, thin_y = volumes((1, 3, 1, 16, 16))  # one slice thick: its H and W slices are 1-pixel-high images
    with pytest.raises(ValueError, match=r"axis 3 .*thin along axis 2: slice only along it \(axes=\(2,\)\)"):
        VolumeLoss(loss2d)(thin_x, thin_y)
    assert VolumeLoss(loss2d, axes=(2,))(thin_x, thin_y).shape == ()  # as the message says


_PEAK = textwrap.dedent(
    """
    import json, sys, torch
    from perceptloss import FeatureLoss
    from perceptloss.volume import VolumeLoss
    torch.manual_seed(0)
    chunk, checkpoint = int(sys.argv[1]), sys.argv[2] == "1"
    loss = FeatureLoss("vgg16", ["relu1_2", "relu2_2"], weights=None, reduction="none")
    x = torch.rand(1, 3, 32, 32, 32, requires_grad=True)
    y = torch.rand(1, 3, 32, 32, 32)
    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    before = hwm()
    VolumeLoss(loss, chunk=chunk, checkpoint=checkpoint)(x, y).backward()
    print(json.dumps({"growth_mib": hwm() - before}))
    """
)


def peak_growth(chunk: int, checkpoint: bool) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PEAK, str(chunk), str(int(checkpoint))], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["growth_mib"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_chunks_bound_peak_memory():
    """All 3 x 32 slices of a 32^3 volume in one graph (no chunks, no checkpoint) vs 8 slices per checkpointed chunk."""
    naive, chunked = peak_growth(10**6, False), peak_growth(8, True)
    assert chunked < 0.5 * naive, (naive, chunked)
