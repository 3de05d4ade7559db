"""Loads the compiled operator (perceptloss._C) and registers its fake and autograd implementations.

``torch.ops.perceptloss.feature_distance`` is defined in C++ (csrc/ops/feature_distance.cpp); here it gets a
fake kernel (shape/dtype propagation for torch.compile and FakeTensor) and a backward that calls the fused
``feature_distance_backward`` once for the inputs and the targets. Both take the norm ``p`` (2: squared
difference, the default; 1: absolute difference). ``feature_distance_backward`` has its own derivative
(``_backward_of_backward``, plain torch ops), so second-order gradients (``create_graph=True``: gradient
penalties, Hessian-vector products) are exact.

Without the compiled operator (no compiler at install time) the library runs on the pure-PyTorch path and
importing this module warns ONCE with :class:`FusedOperatorUnavailableWarning`, saying why and how to build the
operator. ``PERCEPTLOSS_NO_EXT_WARNING=1`` silences it. ``PERCEPTLOSS_DISABLE_EXT=1`` skips loading ``_C`` (a
switch for tests of the fallback; ``HAS_EXT`` is then False). See ``perceptloss._env`` for every variable.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

from ._dtypes import accumulation_dtype
from ._env import flag

class FusedOperatorUnavailableWarning(UserWarning):
    """The compiled operator is not available: the losses run on the slower pure-PyTorch path."""


_IMPORT_ERROR: Exception | None = None
if flag("PERCEPTLOSS_DISABLE_EXT"):
    HAS_EXT = False
    _IMPORT_ERROR = ImportError("PERCEPTLOSS_DISABLE_EXT=1 is set: perceptloss._C was not loaded; unset it to load the built one")
else:
    try:
        from . import _C  # noqa: F401  (registers torch.ops.perceptloss.*)

        HAS_EXT = True
    except ImportError as e:  # pure-PyTorch installation
        HAS_EXT = False
        _IMPORT_ERROR = e


def _has_kernel_for(op: str, key: str) -> bool:
    """Whether the built operator library has a ``key`` ('CPU', 'CUDA') kernel for ``perceptloss::<op>``."""
    return HAS_EXT and torch._C._dispatch_has_kernel_for_dispatch_key(f"perceptloss::{op}", key)


# Looked up once: torch.compile cannot trace the dispatcher query.
_KERNELS = frozenset(t for t, key in (("cpu", "CPU"), ("cuda", "CUDA")) if _has_kernel_for("feature_distance", key))
_RELU_KERNELS = all(_has_kernel_for(op, "CPU") for op in ("relu_backward", "max_pool2x2_relu_backward", "max_pool2x2"))


def has_relu_kernels() -> bool:
    """True when the operator's CPU kernels for the trunks' 2x2 max-pool and ReLU / max-pool backward are built
    (``perceptloss._conv_relu``)."""
    return _RELU_KERNELS


def has_kernel(device_type: str) -> bool:
    """True when the fused operator has a kernel for ``device_type`` ('cpu' or 'cuda')."""
    return device_type in _KERNELS


def supports(device: torch.device) -> bool:
    return has_kernel(torch.device(device).type)


def build_command() -> str:
    """The shell command that (re)builds the operator for this installation, showing the build error if any.

    In a source checkout: an editable install of it; otherwise a rebuild of this version from its sdist.
    ``--no-build-isolation`` compiles against the torch installed here (the operator's ABI is torch's).
    """
    root = Path(__file__).resolve().parent.parent
    pip = f"PERCEPTLOSS_REQUIRE_EXT=1 {sys.executable} -m pip install -v --no-build-isolation --no-deps"
    if (root / "setup.py").is_file() and (root / "csrc").is_dir():  # a source checkout (editable install)
        return f"cd {root} && {pip} -e ."
    from importlib import metadata

    try:
        version = "==" + metadata.version("perceptloss")
    except metadata.PackageNotFoundError:
        version = ""
    return f"{pip} --force-reinstall --no-binary perceptloss perceptloss{version}"


def unavailable_reason(device: torch.device) -> str:
    if not HAS_EXT:
        return (
            f"the fused operator is not built ({_IMPORT_ERROR}); the pure-PyTorch path is used (slower). "
            f"With torch and a C++ compiler installed, build it with: {build_command()} "
            "(add FORCE_CUDA=1 CUDA_HOME=... for CUDA; PERCEPTLOSS_NO_EXT_WARNING=1 silences the warning)"
        )
    return f"the fused operator was built without a kernel for {torch.device(device).type}; rebuild with FORCE_CUDA=1"


def _warn_if_unavailable() -> None:
    if HAS_EXT or flag("PERCEPTLOSS_NO_EXT_WARNING"):
        return
    warnings.warn(unavailable_reason(torch.device("cpu")), FusedOperatorUnavailableWarning, stacklevel=1)


_warn_if_unavailable()  # once per process: a module is imported once


def _backward_of_backward(grad, inputs, targets, weights, p, grads_ga, grads_gb, need_grad, need_a, need_b):
    """Derivative of ``feature_distance_backward``, in plain torch ops (so it is itself differentiable).

    The backward computes ``ga_l = p s_l g[:, l] phi(a_l - b_l)`` and ``gb_l = -ga_l`` with ``s_l = w_l / (C H W)``
    and ``phi(d) = d`` (p = 2) or ``sign(d)`` (p = 1). Given the incoming gradients ``u_l = dL/dga_l - dL/dgb_l``
    (N, ...), it returns
      - d/dg: ``p s_l sum(u_l phi(d_l))`` per sample, (N, L) like ``grad``;
      - d/da_l: ``p s_l g[:, l] u_l`` for p = 2 (``2 s_l g u``), 0 for p = 1 (sign is flat a.e.); d/db_l = -d/da_l.
    """
    n_layers = len(inputs)
    acc = grad.dtype
    grad_g_cols, grad_a, grad_b = [], [None] * n_layers, [None] * n_layers
    for l, (a, b) in enumerate(zip(inputs, targets)):
        u = None
        if grads_ga is not None and grads_ga[l] is not None:
            u = grads_ga[l]
        if grads_gb is not None and grads_gb[l] is not None:
            u = -grads_gb[l] if u is None else u - grads_gb[l]
        s = p * weights[l] / max(a[0].numel(), 1) if a.dim() > 0 and a.shape[0] > 0 else p * weights[l]
        if u is None:
            grad_g_cols.append(grad.new_zeros(grad.shape[0]))
            continue
        d = a.to(acc) - b.to(acc)
        phi = d if p == 2 else torch.sign(d)
        grad_g_cols.append((u.to(acc) * phi).flatten(1).sum(1) * s)
        if p == 2 and (need_a[l] or need_b[l]):
            ga = u.to(acc) * (grad[:, l].to(acc) * s).view(-1, *[1] * (a.dim() - 1))
            if need_a[l]:
                grad_a[l] = ga.to(a.dtype)
            if need_b[l]:
                grad_b[l] = (-ga).to(b.dtype)
    grad_g = torch.stack(grad_g_cols, dim=1).to(grad.dtype) if need_grad else None
    return grad_g, grad_a, grad_b


if HAS_EXT:

    @torch.library.register_fake("perceptloss::feature_distance")
    def _feature_distance_fake(inputs, targets, weights, p=2):
        torch._check(len(inputs) > 0, lambda: "feature_distance needs at least one layer")
        return inputs[0].new_empty((inputs[0].shape[0], len(inputs)), dtype=accumulation_dtype(inputs[0].dtype))

    @torch.library.register_fake("perceptloss::feature_distance_backward")
    def _feature_distance_backward_fake(grad, inputs, targets, weights, input_grad, target_grad, p=2):
        grads_a = [torch.empty_like(a) for a in inputs] if input_grad else []
        grads_b = [torch.empty_like(a) for a in inputs] if target_grad else []
        return grads_a, grads_b

    def _pool_format(t: torch.Tensor) -> torch.memory_format:  # the layout the CPU kernels write (relu_backward_cpu.cpp)
        return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format

    @torch.library.register_fake("perceptloss::relu_backward")
    def _relu_backward_fake(grad, output, grad2=None):
        return torch.empty_like(output)

    @torch.library.register_fake("perceptloss::max_pool2x2_relu_backward")
    def _max_pool2x2_relu_backward_fake(grad, output):
        return torch.empty(output.shape, dtype=output.dtype, device=output.device, memory_format=_pool_format(output))

    @torch.library.register_fake("perceptloss::max_pool2x2")
    def _max_pool2x2_fake(x):
        n, c, h, w = x.shape
        return torch.empty((n, c, h // 2, w // 2), dtype=x.dtype, device=x.device, memory_format=_pool_format(x))

    def _setup_context(ctx, inputs, output):
        features_a, features_b, weights = inputs[:3]
        ctx.save_for_backward(*features_a, *features_b)
        ctx.num_layers = len(features_a)
        ctx.weights = list(weights)
        ctx.p = inputs[3] if len(inputs) > 3 else 2

    def _backward(ctx, grad):
        saved = ctx.saved_tensors
        a, b = list(saved[: ctx.num_layers]), list(saved[ctx.num_layers :])
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        input_grad, target_grad = any(need_a), any(need_b)
        grads_a, grads_b = torch.ops.perceptloss.feature_distance_backward(
            grad, a, b, ctx.weights, input_grad, target_grad, ctx.p
        )
        none = [None] * ctx.num_layers  # the structure of the inputs must be kept even where no grad is needed
        out_a = [g if n else None for g, n in zip(grads_a, need_a)] if input_grad else none
        out_b = [g if n else None for g, n in zip(grads_b, need_b)] if target_grad else none
        return out_a, out_b, None, None

    torch.library.register_autograd("perceptloss::feature_distance", _backward, setup_context=_setup_context)

    def _setup_context_backward(ctx, inputs, output):
        grad, features_a, features_b, weights, input_grad, target_grad = inputs[:6]
        ctx.save_for_backward(grad, *features_a, *features_b)
        ctx.num_layers = len(features_a)
        ctx.weights = list(weights)
        ctx.input_grad, ctx.target_grad = bool(input_grad), bool(target_grad)
        ctx.p = inputs[6] if len(inputs) > 6 else 2

    def _backward_backward(ctx, grads_ga, grads_gb):
        saved = ctx.saved_tensors
        grad, n = saved[0], ctx.num_layers
        a, b = list(saved[1 : 1 + n]), list(saved[1 + n :])
        need_grad, need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_g, grad_a, grad_b = _backward_of_backward(
            grad, a, b, ctx.weights, ctx.p,
            grads_ga if ctx.input_grad else None, grads_gb if ctx.target_grad else None,
            need_grad, need_a, need_b,
        )
        return grad_g, grad_a, grad_b, None, None, None, None

    torch.library.register_autograd(
        "perceptloss::feature_distance_backward", _backward_backward, setup_context=_setup_context_backward
    )
