"""torch.compile of the losses: one graph (fullgraph=True), no recompilation per call, the fused operator and the
channels_last layout kept in the graph, the eager values; torch.func transforms over compiled and eager losses.

The quick tests trace with dynamo only (a backend that records the FX graph, or aot_eager); the inductor tests
are in the slow tier. Float32 values are compared norm-wise (tests/helpers.py) with rtol 1e-5: the compiled
graph runs the same convolution kernels and the same fused operator as the eager loss.
"""
from __future__ import annotations

import pytest
import torch

import perceptloss
from perceptloss import FeatureLoss, feature_distance
from perceptloss._dtypes import functorch_transform_active

from .helpers import assert_close, tiny_loss

needs_cpu_kernel = pytest.mark.skipif(not perceptloss.backends.has_kernel("cpu"), reason="fused operator not built")
FUSED = "perceptloss.feature_distance"


class GraphRecorder:
    """A dynamo backend that keeps every FX graph it is given and runs it as traced."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs) -> object:
        self.graphs.append(gm)
        return gm.forward

    def targets(self) -> list[str]:
        return [str(n.target) for gm in self.graphs for n in gm.graph.nodes if n.op in ("call_function", "call_method")]

    def calls(self, name: str) -> int:
        return sum(name in t for t in self.targets())


class Head(torch.nn.Module):
    """A model whose forward calls the loss: a 3x3 convolution, then the loss against the target."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.loss = loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(torch.sigmoid(self.conv(x)), y)


def images(n: int = 2, size: int = 16, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=g, dtype=dtype), torch.rand(n, 3, size, size, generator=g, dtype=dtype)


def no_recompile_call(fn, *args):
    """Call ``fn`` once more with ``error_on_recompile``: a second call with the same shapes must reuse the graph."""
    with torch._dynamo.config.patch(error_on_recompile=True):
        return fn(*args)


# ------------------------------------------------------------------------------ the functorch check while tracing


def test_the_transform_check_reads_false_while_tracing_outside_a_transform():
    torch.compiler.reset()
    flag = torch.compile(lambda x: x + float(functorch_transform_active()), backend="eager", fullgraph=True)
    assert flag(torch.zeros(())).item() == 0.0
    assert not functorch_transform_active()


def test_the_transform_check_reads_true_while_tracing_inside_a_transform():
    torch.compiler.reset()
    inner = torch.compile(lambda x: x + float(functorch_transform_active()), backend="eager", fullgraph=True)
    assert torch.equal(torch.func.vmap(inner)(torch.zeros(3)), torch.ones(3))  # vmap(compiled)
    outer = torch.compile(lambda x: torch.func.vmap(lambda r: r + float(functorch_transform_active()))(x),
                          backend="eager", fullgraph=True)
    assert torch.equal(outer(torch.zeros(3)), torch.ones(3))  # compiled(vmap): dynamo runs vmap's levels


@needs_cpu_kernel
@pytest.mark.parametrize("fused", [True, None])
def test_compiled_feature_distance_calls_the_fused_operator(fused):
    torch.compiler.reset()
    rec = GraphRecorder()
    a, b = [torch.rand(2, 4, 5, 5)], [torch.rand(2, 4, 5, 5)]
    out = torch.compile(lambda x, y: feature_distance(x, y, fused=fused), backend=rec, fullgraph=True)(a, b)
    assert rec.calls(FUSED) == 1 and rec.calls("square") == 0
    assert_close(out, feature_distance(a, b, fused=fused))


# ------------------------------------------------------------------------------------------ the loss, compiled


def test_layer_weights_that_change_between_compilations_keep_one_graph():
    """dynamo makes a float that differs between two compilations of the same code symbolic ("automatic
    dynamic"); the weights' number check must not run on it (math.isfinite broke the graph: fullgraph=True failed
    for the second loss with other layer weights in a process). Values follow each call's weights."""
    torch.compiler.reset()
    g = torch.Generator().manual_seed(0)
    a, b = [torch.rand(2, 3, 4, 4, generator=g)], [torch.rand(2, 3, 4, 4, generator=g)]
    for w in (1.0, 2.0, 3.0):
        compiled = torch.compile(lambda a, b: feature_distance(a, b, [w]), fullgraph=True, backend="aot_eager")
        assert_close(compiled(a, b), feature_distance(a, b, [w]))
    torch.compiler.reset()


@pytest.mark.parametrize("dtype", [None, "auto"], ids=["fp32", "auto"])
def test_compiled_loss_and_model_are_one_graph_with_the_fused_operator_and_channels_last(dtype):
    """FeatureLoss("vgg19", "dfc123") alone and inside a model: one graph each, the fused operator (when built)
    and the channels_last conversion in it, no recompilation on a second call with the same shapes."""
    loss = FeatureLoss("vgg19", "dfc123", weights=None, dtype=dtype)
    model = Head(loss)
    x, y = images()
    x.requires_grad_()  # a training graph
    for fn in (loss, model):
        torch.compiler.reset()
        rec = GraphRecorder()
        compiled = torch.compile(fn, backend=rec, fullgraph=True)
        compiled(x, y)
        fn(x, y)  # an eager call between: the weights are in the activations' layout already, nothing changes
        no_recompile_call(compiled, x, y)
        assert len(rec.graphs) == 1
        assert rec.calls(FUSED) == (1 if perceptloss.backends.has_kernel("cpu") else 0)
        layouts = [n.kwargs.get("memory_format") for gm in rec.graphs for n in gm.graph.nodes]
        assert torch.channels_last in layouts


def test_compiled_loss_and_model_match_eager_values_and_gradients():
    loss = FeatureLoss("vgg19", "dfc123", weights=None, reduction="none")
    model = Head(loss)
    x, y = images()
    for fn, wrt in ((loss, None), (model, list(model.conv.parameters()))):
        torch.compiler.reset()
        compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
        xs = x.clone().requires_grad_()
        eager = fn(xs, y)
        eager_grads = torch.autograd.grad(eager.sum(), wrt or [xs])
        for _ in range(2):
            xc = x.clone().requires_grad_()
            got = compiled(xc, y)
            assert_close(got, eager, rtol=1e-5)
            for g, e in zip(torch.autograd.grad(got.sum(), wrt or [xc]), eager_grads):
                assert_close(g, e, rtol=1e-5)


# ------------------------------------------------------------------------------------ ReLUs in training graphs


def test_relu_keeping_output_has_relus_values_and_gradients():
    from perceptloss._relu import relu_keeping_output

    x = torch.tensor([[-2.0, -0.0, 0.0, 1e-300, 3.0]], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[5.0, 6.0, 7.0, 8.0, 9.0]], dtype=torch.float64)
    (expected,) = torch.autograd.grad(torch.relu(x), x, g)
    out = relu_keeping_output(x)
    assert torch.equal(out, torch.relu(x))
    (got,) = torch.autograd.grad(out, x, g)
    assert torch.equal(got, expected)
    assert torch.equal(torch.func.vmap(relu_keeping_output)(x.detach()), torch.relu(x.detach()))


def saved_dtypes(fn, *args) -> list[torch.dtype]:
    """The dtypes of the forward outputs of a compiled training graph of ``fn`` (its outputs and what it keeps
    for the backward), partitioned as inductor does it: its decompositions, then a min-cut partition."""
    from functorch.compile import min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd
    import torch._inductor.lowering  # noqa: F401 - the decompositions below read it
    from torch._inductor.decomposition import select_decomp_table

    saved: list[torch.dtype] = []

    def forward_compiler(gm, example_inputs):
        (output,) = [n for n in gm.graph.nodes if n.op == "output"]
        saved.extend(a.meta["val"].dtype for a in output.args[0] if isinstance(a, torch.fx.Node) and "val" in a.meta
                     and isinstance(a.meta["val"], torch.Tensor))
        return gm.forward

    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=lambda gm, _: gm.forward,
                           partition_fn=min_cut_rematerialization_partition, decompositions=select_decomp_table())
    torch.compiler.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return saved


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_compiled_cpu_training_graph_keeps_no_boolean_relu_masks(dtype, monkeypatch):
    """A compiled VGG loss keeps ReLU outputs, not boolean masks, for its backward on the CPU (inductor's CPU
    code is slow on boolean tensors): with the convolution + ReLU blocks (perceptloss._conv_relu) and, where they
    cannot run, with perceptloss._relu; with the network's own ReLUs it keeps masks."""
    from perceptloss.backbones import sequential

    loss = FeatureLoss("vgg19", "dfc123", weights=None, dtype=dtype)
    x, y = images()
    x.requires_grad_()
    dtypes = saved_dtypes(loss, x, y)
    assert dtypes and torch.bool not in dtypes
    monkeypatch.setattr(sequential, "can_fuse", lambda conv, x: False)
    dtypes = saved_dtypes(loss, x, y)
    assert dtypes and torch.bool not in dtypes
    monkeypatch.setattr(sequential, "keeps_output_while_tracing", lambda x: False)
    assert torch.bool in saved_dtypes(loss, x, y)


# ------------------------------------------------------------------------------- torch.func over compiled losses


@pytest.mark.parametrize("network", ["tiny", "vgg19"])
def test_torch_func_grad_and_vmap_of_compiled_and_eager_losses(tiny_net, network):
    """torch.func.grad / vmap of a compiled loss, and a compiled torch.func.grad / vmap of a loss, give the eager
    loss's values (the transforms run the reference distance: the same maths; float64 to rounding, float32 for
    VGG19 norm-wise rtol 1e-5).

    PyTorch compiles a function called inside a transform from eager mode only with backend="eager" (pytorch
    issue 128711; other backends fall back to running it eagerly), so the compiled loss here uses that backend;
    the compiled transforms use aot_eager."""
    if network == "tiny":
        loss = tiny_loss(tiny_net, reduction="none", check_range="off").double()
        x, y = images(2, 8, torch.float64)
    else:
        loss = FeatureLoss("vgg19", "dfc123", weights=None, reduction="none")
        x, y = images(2, 16)
    xr = x.clone().requires_grad_()
    (expected_grad,) = torch.autograd.grad(loss(xr, y).sum(), xr)
    expected = loss(x, y)

    def total(a):
        return loss(a, y).sum()

    def one(a, b):
        return loss(a[None], b[None])[0]

    torch.compiler.reset()
    compiled_loss = torch.compile(loss, backend="eager", fullgraph=True)
    grads = {
        "eager grad": torch.func.grad(total)(x),
        "grad of compiled": torch.func.grad(lambda a: compiled_loss(a, y).sum())(x),
        "compiled grad": torch.compile(torch.func.grad(total), backend="aot_eager", fullgraph=True)(x),
    }
    for name, g in grads.items():
        assert_close(g, expected_grad, msg=name)
    per_sample = {
        "eager vmap": torch.func.vmap(one)(x, y),
        "vmap of compiled": torch.func.vmap(lambda a, b: compiled_loss(a[None], b[None])[0])(x, y),
        "compiled vmap": torch.compile(torch.func.vmap(one), backend="aot_eager", fullgraph=True)(x, y),
    }
    for name, v in per_sample.items():
        assert_close(v, expected, msg=name)
    assert_close(compiled_loss(x, y), expected)  # the graph traced outside the transforms still runs


@needs_cpu_kernel
def test_a_graph_traced_outside_a_transform_is_not_reused_inside_one():
    """The transform check is a constant of the graph; dynamo's guards (the functorch dispatch keys) retrace the
    call inside a transform, even on tensors the transform does not wrap, so the check is asked again there."""
    from torch._dynamo.utils import counters

    torch.compiler.reset()
    counters.clear()
    a, b = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    compiled = torch.compile(lambda p, q: feature_distance([p], [q]).sum(), backend="eager", fullgraph=True)
    expected = compiled(a, b)
    got = torch.func.grad(lambda s: s * compiled(a, b))(torch.tensor(2.0))  # a, b themselves not transformed
    assert_close(got, expected)
    assert counters["stats"]["unique_graphs"] == 2


# ----------------------------------------------------------------------------------------------- inductor (slow)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_inductor_loss_and_model_match_eager_in_one_graph(dtype):
    """Inductor: fullgraph compiles of the loss and of a model calling it, the fused operator in the generated
    code, no recompilation, the eager values and gradients (float32: rtol 1e-5 norm-wise; bfloat16: 1.6e-2)."""
    from torch._inductor.utils import run_and_get_code

    loss = FeatureLoss("vgg19", "dfc123", weights=None, dtype=dtype)
    model = Head(loss)
    x, y = images(2, 32)
    for fn, wrt in ((loss, None), (model, list(model.conv.parameters()))):
        torch.compiler.reset()
        compiled = torch.compile(fn, fullgraph=True)
        xs = x.clone().requires_grad_()
        expected = fn(xs, y)
        expected_grads = torch.autograd.grad(expected, wrt or [xs])

        def step():
            xc = x.clone().requires_grad_()
            out = compiled(xc, y)
            return out, torch.autograd.grad(out, wrt or [xc])

        (got, grads), code = run_and_get_code(step)
        if perceptloss.backends.has_kernel("cpu"):
            assert "torch.ops.perceptloss.feature_distance.default(" in code[0]
            assert "torch.ops.perceptloss.feature_distance_backward.default(" in code[1]
        again, again_grads = no_recompile_call(step)
        for out, gs in ((got, grads), (again, again_grads)):
            assert_close(out, expected, rtol=1e-5 if dtype is None else None)
            for g, e in zip(gs, expected_grads):
                assert_close(g, e, rtol=1e-5 if dtype is None else None)


@pytest.mark.slow
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="inductor's convolution fusions need oneDNN")
@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_inductor_fuses_every_convolution_with_its_relu_in_evaluation(dtype):
    """Evaluation (no gradient) compiled with freezing: inductor fuses each of the 5 convolutions (input and target
    go through the network as one batch when no gradient is asked) with its ReLU, next to the fused operator; float32 rtol 1e-5 norm-wise against eager (another oneDNN
    convolution path), bfloat16 1.6e-2."""
    from torch._dynamo.utils import counters
    from torch._inductor.utils import run_and_get_code

    if dtype is torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bfloat16 convolutions on this CPU")
    loss = FeatureLoss("vgg19", "dfc123", weights=None, dtype=dtype, reduction="none")
    x, y = images(2, 32)
    with torch.no_grad():
        expected = loss(x, y)
        torch.compiler.reset()
        counters.clear()
        with torch._inductor.config.patch(freezing=True):
            got, code = run_and_get_code(torch.compile(loss, fullgraph=True), x, y)
    assert counters["inductor"]["mkldnn_unary_fusion_matcher_count"] == 5
    assert code[0].count("'relu', [None], '')") == 5
    if perceptloss.backends.has_kernel("cpu"):
        assert "torch.ops.perceptloss.feature_distance.default(" in code[0]
    assert_close(got, expected, rtol=1e-5 if dtype is None else None)


@pytest.mark.skipif(not perceptloss.backends.has_kernel("cpu"), reason="the compiled operator is not built")
def test_compiled_training_graph_runs_the_convolution_relu_blocks():
    """A compiled CPU training graph of a VGG loss runs the trunk's convolution + ReLU (+ pool) blocks of
    perceptloss._conv_relu, as eager does: oneDNN's fused primitive forward, the operator's ReLU / max-pool
    backward kernels; the same values and gradients as eager (float32, norm-wise 1e-6)."""
    from functorch.compile import make_boxed_func
    from perceptloss._conv_relu import _AVAILABLE
    from torch._dynamo.backends.common import aot_autograd

    if not _AVAILABLE:
        pytest.skip("this torch has no oneDNN")
    code: list[str] = []

    def keep(gm, _):
        code.append(gm.code)
        return make_boxed_func(gm.forward)

    loss = FeatureLoss("vgg19", "dfc123", weights=None)
    x, y = images(2, 32)
    xr = x.clone().requires_grad_()
    expected = loss(xr, y)
    (expected_grad,) = torch.autograd.grad(expected, xr)
    torch.compiler.reset()
    compiled = torch.compile(loss, backend=aot_autograd(fw_compiler=keep, bw_compiler=keep), fullgraph=True)
    xr = x.clone().requires_grad_()
    got = compiled(xr, y)
    (got_grad,) = torch.autograd.grad(got, xr)
    forward, backward = code
    assert forward.count("mkldnn._convolution_pointwise") == 5 and "perceptloss.max_pool2x2" in forward
    assert backward.count("perceptloss.max_pool2x2_relu_backward") == 2
    assert backward.count("perceptloss.relu_backward") == 3
    assert_close(got, expected, rtol=1e-6)
    assert_close(got_grad, expected_grad, rtol=1e-6)
