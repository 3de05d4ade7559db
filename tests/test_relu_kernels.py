"""The operator's CPU kernels for the trunks' ReLU and 2x2 max-pool (perceptloss._conv_relu): the values and
gradients of ATen's max-pool, max-pool backward and threshold_backward, exactly (they select values and add at
most two gradients, rounded once), at every CPU level built, in both layouts; and the fused blocks in a loss give
the gradients the ATen operators give, bit for bit."""
import pytest
import torch
import torch.nn.functional as F

import perceptloss._ops as ops_module
from perceptloss import FeatureLoss
from perceptloss._conv_relu import _AVAILABLE as ONEDNN

pytestmark = pytest.mark.skipif(not ops_module.has_relu_kernels(), reason="the compiled operator is not built")

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
LAYOUTS = [torch.channels_last, torch.contiguous_format]
#: odd heights and widths (a row and a column no window covers), one channel, C not a multiple of a vector
SHAPES = [(2, 35, 7, 9), (3, 64, 8, 8), (1, 1, 5, 4), (2, 16, 2, 2), (2, 3, 3, 6)]
ops = torch.ops.perceptloss


def levels():
    from perceptloss.backends.cpu import kernel_levels
    return kernel_levels()


def relu_output(shape, dtype, layout, seed=0):
    """relu of values rounded to 0.1: many ties inside a window, many zeros."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).round(decimals=1).relu().to(dtype).contiguous(memory_format=layout)


def aten_pool_relu_backward(grad, y):
    window = ([2, 2], [2, 2], [0, 0], [1, 1], False)
    _, indices = torch.ops.aten.max_pool2d_with_indices(y, *window)
    unpooled = torch.ops.aten.max_pool2d_with_indices_backward(grad, y, *window, indices)
    return torch.ops.aten.threshold_backward(unpooled, y, 0)


@pytest.mark.parametrize("level", levels())
@pytest.mark.parametrize("layout", LAYOUTS, ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_kernels_equal_atens_operators(level, layout, dtype):
    from perceptloss.backends.cpu import forced_kernel_level
    for shape in SHAPES:
        y = relu_output(shape, dtype, layout)
        pooled_grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2).to(dtype)
        g1, g2 = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype).contiguous(memory_format=layout)
        x = torch.randn(shape).round(decimals=1).to(dtype).contiguous(memory_format=layout)
        x[0, 0, 1, 1] = float("nan")  # a NaN propagates through the max-pool, as in ATen's
        with forced_kernel_level(level):
            pooled = ops.max_pool2x2(x)
            through_pool = ops.max_pool2x2_relu_backward(pooled_grad, y)
            one, two = ops.relu_backward(g1, y), ops.relu_backward(g1, y, g2)
        assert torch.equal(pooled.nan_to_num(9.0), F.max_pool2d(x, 2, 2).nan_to_num(9.0)), shape
        assert torch.equal(through_pool, aten_pool_relu_backward(pooled_grad, y)), shape
        assert torch.equal(one, torch.ops.aten.threshold_backward(g1, y, 0)), shape
        assert torch.equal(two, torch.ops.aten.threshold_backward(g1 + g2, y, 0)), shape
        assert through_pool.is_contiguous(memory_format=layout) and two.stride() == y.stride()


def test_clear_errors_and_fake_kernels():
    y = torch.rand(1, 2, 4, 4)
    with pytest.raises(RuntimeError, match=r"grad must be \(1, 2, 2, 2\)"):
        ops.max_pool2x2_relu_backward(torch.rand(1, 2, 4, 4), y)
    with pytest.raises(RuntimeError, match="shapes differ"):
        ops.relu_backward(torch.rand(1, 2, 4, 3), y)
    with pytest.raises(RuntimeError, match="H, W >= 2"):
        ops.max_pool2x2(torch.rand(1, 2, 1, 4))
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.relu_backward(y.double(), y)
    torch.library.opcheck(ops.relu_backward, (torch.randn(1, 2, 4, 4), y, torch.randn(1, 2, 4, 4)))
    torch.library.opcheck(ops.max_pool2x2_relu_backward, (torch.randn(1, 2, 2, 2), y))
    torch.library.opcheck(ops.max_pool2x2, (y,))


def gradient_and_graph(loss, x, y):
    x = x.clone().requires_grad_()
    value = loss(x, y)
    names, stack, seen = set(), [value.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return value.detach(), torch.autograd.grad(value, x)[0], names


@pytest.mark.skipif(not ONEDNN, reason="this torch has no oneDNN")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fused_blocks_give_the_gradients_of_atens_operators(monkeypatch, dtype):
    """dfc123 on VGG19: conv1_2 + ReLU + pool and conv2_2 + ReLU + pool fused, relu1_1 and relu2_1 tapped (read by
    the loss and the next convolution); the same values and input gradients, bit for bit, as with ATen's ops."""
    from perceptloss._conv_relu import _BF16
    if dtype == torch.bfloat16 and not _BF16:
        pytest.skip("oneDNN runs no bfloat16 convolution on this CPU (level)")
    torch.manual_seed(0)
    loss = FeatureLoss("vgg19", "dfc123", weights=None, dtype=dtype)
    x, y = torch.rand(2, 3, 36, 44), torch.rand(2, 3, 36, 44)
    value, grad, names = gradient_and_graph(loss, x, y)
    assert {"_ConvReLUPoolBackward", "_ConvReLUTappedBackward"} <= names
    monkeypatch.setattr(ops_module, "_RELU_KERNELS", False)
    plain_value, plain_grad, _ = gradient_and_graph(loss, x, y)
    assert torch.equal(value, plain_value) and torch.equal(grad, plain_grad)


# ----------------------------------------------------------------------------- DISTS' L2 pooling (forward kernel)


@pytest.mark.parametrize("level", levels())
@pytest.mark.parametrize("layout", LAYOUTS, ids=["channels_last", "contiguous"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_l2_pool_kernel_equals_the_pytorch_pooling(level, layout, dtype):
    """l2_pool3x3 against L2Pool2d's PyTorch path (depthwise convolution of the squares in float32): float64 to
    1e-12, float32 to its rounding, 16-bit after both round the same float32 value (a last-bit difference at most)."""
    from perceptloss.backbones.vgg_l2pool import L2Pool2d
    from perceptloss.backends.cpu import forced_kernel_level

    for shape in SHAPES + [(1, 130, 5, 6), (2, 8, 1, 1)]:
        x = relu_output(shape, dtype, layout)
        pool = L2Pool2d(shape[1])
        with torch.enable_grad():
            expected = pool(x.detach().requires_grad_()).detach()  # with a gradient wanted: the PyTorch path
        with forced_kernel_level(level), torch.no_grad():
            got = pool(x)
        assert got.shape == expected.shape and got.dtype == dtype
        assert got.is_contiguous(memory_format=torch.channels_last)
        tol = {torch.float64: 1e-12, torch.float32: 1e-6}.get(dtype, 1e-2)
        torch.testing.assert_close(got.double(), expected.double(), rtol=tol, atol=tol)


def test_l2_pool_opcheck_and_dists_without_gradient_equal_with():
    from perceptloss import DISTS
    from perceptloss.backbones.vgg_l2pool import hanning_window

    x = torch.rand(2, 5, 7, 6)
    torch.library.opcheck(ops.l2_pool3x3, (x, hanning_window(5).flatten().tolist()))
    torch.manual_seed(0)
    metric = DISTS(weights=None)
    a, b = torch.rand(2, 3, 40, 36), torch.rand(2, 3, 40, 36)
    with torch.no_grad():
        kernel = metric(a, b)
    pytorch = metric(a.clone().requires_grad_(), b).detach()  # a gradient wanted: the pooling in PyTorch
    torch.testing.assert_close(kernel, pytorch, rtol=1e-5, atol=1e-6)
