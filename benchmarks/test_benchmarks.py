"""pytest-benchmark entry points (not part of the test suite): `pytest benchmarks/ --benchmark-only`.

Same contenders and inputs as run.py, at the N=64, 64x64 VGG19 relu1_1..relu5_1 feature shapes.
"""
import pytest
import torch

import bench_lib as bl

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(bl.OPERATOR_CONTENDERS))
def test_operator_forward_backward(benchmark, name, dtype):
    pytest.importorskip("pytest_benchmark")
    a, b, w = bl.make_features("N64-64px", dtype, DEVICE, requires_grad=True)
    fn = bl.OPERATOR_CONTENDERS[name]

    def run():
        grads = torch.autograd.grad(fn(a, b, w).sum(), a)
        bl.sync(DEVICE)
        return grads

    run()
    benchmark(run)
