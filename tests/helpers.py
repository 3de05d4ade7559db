"""Shared test helpers (imported by the test files; fixtures live in conftest.py).

The suite's tolerance rule (the one place it is written down; every comparison follows it)
------------------------------------------------------------------------------------------
The suite must pass on every x86-64 CPU: AVX-512 (with or without AVX512-BF16), AVX2-only, and SSE4.1
(``ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41``). oneDNN and ATen choose their convolution, GEMM
and reduction kernels per CPU, so the same float32 computation sums in another order on another CPU.

1. **Exactness claims are made in float64** (a formula, parity with a reference implementation, a gradient
   identity): ``assert_close`` on float64 tensors is torch's element-wise check (default rtol = atol = 1e-7,
   or the tolerance given). Float64 rounding (~1e-16 per operation) leaves every CPU far inside it.
2. **Float32 (and bfloat16 / float16) results are compared norm-wise**:
   ``||actual - expected||_2 <= atol * sqrt(numel) + rtol * ||expected||_2``, defaults rtol 1e-5 (float32),
   2e-3 (float16), 1.6e-2 (bfloat16) and atol 1e-5 (an RMS floor for tensors that are ~0). An element-wise
   bound fails on another CPU where a few elements near cancellation lose their leading digits (the Zen 1
   failure: 22 of 24,576 gradient elements 1e-6 apart, where the tensor agrees to 1e-7 relative) or must
   be loosened for every element. The norm-wise bound follows from the element-wise one with the same rtol
   and atol (|a-b| <= atol + rtol|b| per element implies it), so it never fails where that one passes,
   while one outlier element cannot make it fail.
3. **Element-wise float32 checks stay only where each element is its own short computation** (the fused
   operator's kernels against a float64 reference: a gradient element is 2w(a-b)/n, a per-sample value is
   one reduction our own kernel orders the same way on every CPU); those call
   ``torch.testing.assert_close`` directly on ``.double()`` copies with the operator tests' ``TOL`` table.
4. **Bitwise claims** (determinism, thread counts, a cache that must return the same tensor, one code path
   reached two ways) use ``assert_equal``: the same kernels in the same order give the same bits on any CPU.
"""
from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path
from typing import Iterator

import torch

#: Default norm-wise relative tolerance per dtype (rule 2): ~100 float32 ulps; a few ulps of the 16-bit formats.
NORM_RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_close(actual, expected, *, rtol: float | None = None, atol: float | None = None, msg: str = "") -> None:
    """Compare by the suite's tolerance rule: element-wise in float64 (and for integers), norm-wise otherwise.

    ``actual`` and ``expected`` must have the same shape, dtype and device (as ``torch.testing.assert_close``).
    For float32/16-bit tensors ``rtol``/``atol`` keep their meaning per element but are applied to the whole
    tensor: ``||actual - expected|| <= atol * sqrt(numel) + rtol * ||expected||``.
    """
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    if actual.dtype not in NORM_RTOL:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=msg or None)
        return
    if (actual.shape, actual.dtype, actual.device) != (expected.shape, expected.dtype, expected.device):
        raise AssertionError(f"{msg} shape/dtype/device differ: {actual.shape} {actual.dtype} {actual.device} "
                             f"vs {expected.shape} {expected.dtype} {expected.device}")
    rtol = NORM_RTOL[actual.dtype] if rtol is None else rtol
    atol = 1e-5 if atol is None else atol
    a, e = actual.detach().double(), expected.detach().double()
    if not (torch.isfinite(a).all() and torch.isfinite(e).all()):  # NaN and inf must sit at the same places
        same = torch.equal(a.isnan(), e.isnan()) and torch.equal(a.isinf(), e.isinf()) and torch.equal(
            a[a.isinf()], e[e.isinf()])
        if not same:
            raise AssertionError(f"{msg} NaN/inf elements differ ({actual.dtype}, shape {tuple(actual.shape)})")
        a, e = torch.nan_to_num(a, 0.0, 0.0, 0.0), torch.nan_to_num(e, 0.0, 0.0, 0.0)
    diff, ref = torch.linalg.vector_norm(a - e).item(), torch.linalg.vector_norm(e).item()
    bound = atol * math.sqrt(max(a.numel(), 1)) + rtol * ref
    if not diff <= bound:
        raise AssertionError(f"{msg} norm-wise mismatch ({actual.dtype}, shape {tuple(actual.shape)}): "
                             f"||actual - expected|| = {diff:.3e} > {bound:.3e} (rtol {rtol:g} * ||expected|| "
                             f"{ref:.3e} + atol {atol:g} * sqrt({a.numel()}))")


def assert_equal(actual, expected, msg: str = "") -> None:
    """Bitwise equality (rule 4): same shape, dtype, device and values (NaN equal to NaN)."""
    torch.testing.assert_close(torch.as_tensor(actual), torch.as_tensor(expected), rtol=0, atol=0,
                               equal_nan=True, msg=msg or None)

SHARED_CELEBA = __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "..", "shared", "data", "celeba")


class TinyNet(torch.nn.Module):
    """A two-stage conv net for fast mechanics tests (float64-capable)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.act2 = torch.nn.ReLU()

    def forward(self, x):
        return self.act2(self.conv2(self.act1(self.conv1(x))))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest relative difference of ``a`` from ``b``."""
    return ((a - b).abs() / b.abs().clamp_min(1e-12)).max().item()


def save_features_checkpoint(trunk: torch.nn.Module, path) -> None:
    """Save ``trunk``'s tensors as a torchvision checkpoint names a trunk's: ``features.<index>.*``."""
    torch.save({f"features.{k}": v for k, v in trunk.state_dict().items()}, path)


def lpips_trunk_state(ref) -> dict[str, torch.Tensor]:
    """lpips' ``net.sliceK.<index>.*`` trunk tensors in torchvision's ``features.<index>.*`` naming."""
    return {re.sub(r"^net\.slice\d+\.", "features.", k): v for k, v in ref.state_dict().items() if k.startswith("net.")}


def tiny_loss(net, **kw):
    """A FeatureLoss over TinyNet's two activations (weights 1 and 0.5), images as given (IDENTITY)."""
    from perceptloss import FeatureLoss
    from perceptloss.preprocessing import IDENTITY

    return FeatureLoss(net, ["act1", "act2"], layer_weights=[1.0, 0.5], normalization=IDENTITY, **kw)


@contextlib.contextmanager
def standin_entries(*paths) -> Iterator[None]:
    """Accept random-weight stand-ins saved under torchvision's file names (``alexnet-owt-7be5be79.pth``, ...)
    while inside: each entry publishing that name is re-registered with the stand-in's own sha256 prefix, and
    restored on exit. The catalogue checks the prefix a torchvision name carries, and no test may download the
    real files."""
    from dataclasses import replace

    from perceptloss.weights import list_weight_entries, register_weights, sha256_file

    originals = []
    try:
        for path in paths:
            name = Path(path).name
            entry = next(e for e in list_weight_entries() if name in e.published_names)
            prefix = sha256_file(Path(path))[: len(entry.source_sha256 or "00000000")]
            originals.append(entry)
            register_weights(replace(entry, source_sha256=prefix), overwrite=True)
        yield
    finally:
        for entry in originals:
            register_weights(entry, overwrite=True)
