"""``perceptloss.metric.PerceptualMetric`` (torchmetrics): accumulation over batches and over ranks (2 gloo
processes), per-sample values, device/dtype following the inputs, refusals; on real CelebA images."""
from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("torchmetrics")

from perceptloss import LPIPS, FeatureLoss  # noqa: E402
from perceptloss.metric import PerceptualMetric  # noqa: E402

from .helpers import TinyNet, relative, tiny_loss  # noqa: E402
from .score_images import celeba_test_files, load_rgb  # noqa: E402


def celeba_batch(count: int) -> torch.Tensor:
    return torch.stack([load_rgb(p)[:, :64, :64] for p in celeba_test_files(count)])


def test_accumulates_over_batches_on_real_images(caffe_weights):
    """The mean over three uneven batches is the mean of the per-sample values of one call (float32, 1e-6
    relative); values() gives them in update order."""
    loss = FeatureLoss("vgg19", "dfc123", reduction="none")
    images = celeba_batch(10)
    distorted = (images + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    metric = PerceptualMetric(loss, per_sample=True)
    for lo, hi in ((0, 3), (3, 4), (4, 10)):
        metric.update(distorted[lo:hi], images[lo:hi])
    with torch.no_grad():
        whole = loss(distorted, images)
    assert relative(metric.values(), whole) < 1e-5
    assert relative(metric.compute().reshape(1), whole.double().mean().float().reshape(1)) < 1e-6
    assert metric.compute().dtype == torch.float32 and not metric.values().requires_grad
    assert metric.signature == loss.signature
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(metric.compute())
    assert metric.values().numel() == 0


def test_float64_follows_the_inputs_exactly():
    torch.manual_seed(0)
    loss = tiny_loss(TinyNet(), reduction="none").double()
    x, y = torch.rand(6, 3, 16, 16, dtype=torch.float64), torch.rand(6, 3, 16, 16, dtype=torch.float64)
    metric = PerceptualMetric(loss)
    metric.update(x[:4], y[:4])
    metric.update(x[4:], y[4:])
    with torch.no_grad():
        assert metric.compute().dtype == torch.float64
        assert torch.allclose(metric.compute(), loss(x, y).mean(), rtol=1e-14, atol=0)


def test_refusals():
    with pytest.raises(ValueError, match="reduction='none'"):
        PerceptualMetric(tiny_loss(TinyNet()))
    metric = PerceptualMetric(LPIPS("alex", weights=None, spatial=True))
    with pytest.raises(ValueError, match="one value per sample"):
        metric.update(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="per_sample=True"):
        PerceptualMetric(tiny_loss(TinyNet(), reduction="none")).values()


def _rank(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    loss = tiny_loss(TinyNet(), reduction="none")
    x, y = torch.rand(7, 3, 16, 16), torch.rand(7, 3, 16, 16)
    metric = PerceptualMetric(loss, per_sample=True)
    share = slice(0, 4) if rank == 0 else slice(4, 7)  # uneven shares
    metric.update(x[share], y[share])
    mean, values = metric.compute(), metric.values()
    with torch.no_grad():
        whole = loss(x, y)
    queue.put((rank, float(mean), values.tolist(), whole.tolist(), float(whole.double().mean())))
    dist.destroy_process_group()


@pytest.mark.slow
def test_accumulates_over_ranks():
    """Two gloo processes with 4 and 3 samples: both get the mean and the values of all 7."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")  # fork can deadlock in a parent whose OpenMP threads ran
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    import queue as queues

    results = []
    while len(results) < len(procs):
        try:
            results.append(queue.get(timeout=1))
        except queues.Empty:
            assert all(p.is_alive() or p.exitcode == 0 for p in procs), "a rank failed (its traceback is above)"
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank, mean, values, whole, whole_mean in results:
        assert values == pytest.approx(whole, rel=1e-6)
        assert mean == pytest.approx(whole_mean, rel=1e-6)


# ---------------------------------------------------------------- issue 35 item 13: merge order, dtype


def _metric_after(loss, batches, per_sample=True):
    metric = PerceptualMetric(loss, per_sample=per_sample)
    for x, y in batches:
        metric.update(x, y)
    return metric


def test_merge_state_keeps_this_metrics_samples_first():
    """After ``merge_state`` the values are this metric's (in update order), then the merged ones (in theirs),
    whether a metric or its ``metric_state`` is merged; sums and counts add; ``forward`` keeps update order."""
    torch.manual_seed(0)
    loss = tiny_loss(TinyNet(), reduction="none").double()
    x, y = torch.rand(7, 3, 16, 16, dtype=torch.float64), torch.rand(7, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        whole = loss(x, y)
    mine, other = [(x[:2], y[:2]), (x[2:3], y[2:3])], [(x[3:5], y[3:5]), (x[5:], y[5:])]
    for incoming in (lambda m: m, lambda m: m.metric_state):
        a, b = _metric_after(loss, mine), _metric_after(loss, other)
        a.merge_state(incoming(b))
        assert torch.equal(a.values(), whole)
        assert torch.allclose(a.compute(), whole.mean(), rtol=1e-14, atol=0) and int(a.count) == 7
        assert torch.equal(b.values(), whole[3:])  # the merged metric is left as it was
    b = _metric_after(loss, other)
    b.merge_state(_metric_after(loss, mine))  # the other way round: b's samples first
    assert torch.equal(b.values(), torch.cat([whole[3:], whole[:3]]))
    fresh = PerceptualMetric(loss, per_sample=True)  # one that has seen nothing takes the incoming dtype
    fresh.merge_state(_metric_after(loss, other))
    assert fresh.compute().dtype == torch.float64 and torch.equal(fresh.values(), whole[3:])
    stepped = PerceptualMetric(loss, per_sample=True)
    for lo, hi in ((0, 2), (2, 3), (3, 7)):
        stepped(x[lo:hi], y[lo:hi])  # torchmetrics' forward merges each batch after the earlier ones
    assert torch.equal(stepped.values(), whole)


def test_merge_state_refuses_what_torchmetrics_refuses():
    metric = PerceptualMetric(tiny_loss(TinyNet(), reduction="none"), per_sample=True)
    with pytest.raises(ValueError, match="dict or an instance of Metric"):
        metric.merge_state([1, 2])
    with pytest.raises(ValueError, match="samples"):
        metric.merge_state({"total": torch.tensor(0.0, dtype=torch.float64), "count": torch.tensor(0)})
