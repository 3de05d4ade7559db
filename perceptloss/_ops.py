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
from ._norms import channel_norm

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


def _kernel_devices(op: str) -> frozenset[str]:
    """The device types ('cpu', 'cuda') ``perceptloss::<op>`` has a kernel for."""
    return frozenset(t for t, key in (("cpu", "CPU"), ("cuda", "CUDA")) if _has_kernel_for(op, key))


# Looked up once: torch.compile cannot trace the dispatcher query.
_KERNELS = _kernel_devices("feature_distance")
_UNIT_KERNELS = _kernel_devices("unit_feature_distance")
_MOMENT_KERNELS = _kernel_devices("paired_moments")
_L2_POOL_KERNEL = _has_kernel_for("l2_pool3x3", "CPU")
_RELU_KERNELS = all(_has_kernel_for(op, "CPU") for op in ("relu_backward", "max_pool2x2_relu_backward", "max_pool2x2"))


def has_relu_kernels() -> bool:
    """True when the operator's CPU kernels for the trunks' 2x2 max-pool and ReLU / max-pool backward are built
    (``perceptloss._conv_relu``)."""
    return _RELU_KERNELS


def has_kernel(device_type: str) -> bool:
    """True when the fused operator has a kernel for ``device_type`` ('cpu' or 'cuda')."""
    return device_type in _KERNELS


def has_unit_kernel(device_type: str) -> bool:
    """True when ``unit_feature_distance`` (LPIPS' and the cosine distance in one pass) has a kernel for ``device_type``."""
    return device_type in _UNIT_KERNELS


def has_l2_pool_kernel() -> bool:
    """True when the CPU kernel of DISTS' L2 pooling (``l2_pool3x3``, forward only) is built."""
    return _L2_POOL_KERNEL


def has_moments_kernel(device_type: str) -> bool:
    """True when ``paired_moments`` (DISTS' per-channel statistics in one pass) has a kernel for ``device_type``."""
    return device_type in _MOMENT_KERNELS


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


def _inverse_norms(f: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, *) -> 1 / (|f| + eps) and 1 / |f| (0 where |f| = 0), the L2 norm over C, kept as (N, 1, *)."""
    norm = channel_norm(f)
    positive = norm > 0
    return 1.0 / (norm + eps), torch.where(positive, 1.0 / torch.where(positive, norm, torch.ones_like(norm)), 0.0)


def _unit_feature_distance_backward(grad, inputs, targets, channel_weights, weights, eps, need_a, need_b, need_w):
    """Gradients of ``unit_feature_distance`` in plain torch ops (so they are differentiable again).

    Per layer, with u(a) = a / (|a| + eps) over channels, P positions and ``g = grad[:, l]``:
    ``t = 2 g w_l / P * c * (u(a) - u(b))`` (c the channel weights), and the normalisation's Jacobian gives
    ``d/da = t / (|a| + eps) - u(a) sum_c(t u(a)) / |a|`` (the second term 0 where |a| = 0, as autograd through
    ``unit_normalize``), ``d/db`` the same for b with -t; ``d/dc = g w_l / P * sum (u(a) - u(b))^2`` over N and P.
    """
    acc = grad.dtype
    grads_a, grads_b, grads_w = [], [], []
    for l, (a, b, c) in enumerate(zip(inputs, targets, channel_weights)):
        spatial = [1] * (a.dim() - 2)
        positions = max(a[0, 0].numel(), 1) if a.shape[0] > 0 else 1
        per_sample = (grad[:, l] * (weights[l] / positions)).view(-1, 1, *spatial)
        ia, ra = _inverse_norms(a.to(acc), eps)
        ib, rb = _inverse_norms(b.to(acc), eps)
        ua, ub = a.to(acc) * ia, b.to(acc) * ib
        d = ua - ub
        t = 2 * per_sample * c.to(acc).view(1, -1, *spatial) * d
        grads_a.append((t * ia - ua * (t * ua).sum(dim=1, keepdim=True) * ra).to(a.dtype) if need_a[l] else None)
        grads_b.append((ub * (t * ub).sum(dim=1, keepdim=True) * rb - t * ib).to(b.dtype) if need_b[l] else None)
        if need_w[l]:
            grads_w.append((per_sample * d.square()).transpose(0, 1).reshape(a.shape[1], -1).sum(dim=1).to(c.dtype))
        else:
            grads_w.append(None)
    return grads_a, grads_b, grads_w


def _paired_moments_backward(grads, inputs, targets, moments, need_x, need_y):
    """Gradients of ``paired_moments`` in plain torch ops (differentiable again). Per layer, with P positions and the
    incoming (5, N, C) gradient g of (m_x, m_y, v_x, v_y, cov): ``d/dx = (g_mx + 2 g_vx (x - m_x) + g_cov (y - m_y)) / P``
    and the same for y with the roles swapped."""
    grads_x, grads_y = [], []
    for l, (x, y, m) in enumerate(zip(inputs, targets, moments)):
        g = grads[l]
        if g is None or not (need_x[l] or need_y[l]):
            grads_x.append(None)
            grads_y.append(None)
            continue
        spatial = [1] * (x.dim() - 2)
        positions = max(x[0, 0].numel(), 1) if x.shape[0] > 0 else 1
        g = g.to(m.dtype) / positions
        gm_x, gm_y, gv_x, gv_y, g_cov = (t.view(*t.shape, *spatial) for t in g)
        m_x, m_y = (t.view(*t.shape, *spatial) for t in m[:2])
        dx, dy = x.to(m.dtype) - m_x, y.to(m.dtype) - m_y
        grads_x.append((gm_x + 2 * gv_x * dx + g_cov * dy).to(x.dtype) if need_x[l] else None)
        grads_y.append((gm_y + 2 * gv_y * dy + g_cov * dx).to(y.dtype) if need_y[l] else None)
    return grads_x, grads_y


if HAS_EXT:

    @torch.library.register_fake("perceptloss::paired_moments")
    def _paired_moments_fake(inputs, targets):
        return [x.new_empty((5, x.shape[0], x.shape[1]), dtype=accumulation_dtype(x.dtype)) for x in inputs]

    def _setup_context_moments(ctx, inputs, output):
        xs, ys = inputs
        ctx.save_for_backward(*xs, *ys, *output)
        ctx.num_layers = len(xs)

    def _backward_moments(ctx, grads):
        saved, n = ctx.saved_tensors, ctx.num_layers
        xs, ys, ms = list(saved[:n]), list(saved[n : 2 * n]), list(saved[2 * n :])
        return _paired_moments_backward(list(grads), xs, ys, ms, *ctx.needs_input_grad[:2])

    torch.library.register_autograd("perceptloss::paired_moments", _backward_moments, setup_context=_setup_context_moments)

    @torch.library.register_fake("perceptloss::unit_feature_distance")
    def _unit_feature_distance_fake(inputs, targets, channel_weights, weights, eps=1e-10):
        torch._check(len(inputs) > 0, lambda: "unit_feature_distance needs at least one layer")
        return inputs[0].new_empty((inputs[0].shape[0], len(inputs)), dtype=accumulation_dtype(inputs[0].dtype))

    @torch.library.register_fake("perceptloss::unit_feature_distance_backward")
    def _unit_feature_distance_backward_fake(grad, inputs, targets, channel_weights, weights, eps, input_grad, target_grad):
        grads_a = [torch.empty_like(a) for a in inputs] if input_grad else []
        grads_b = [torch.empty_like(a) for a in inputs] if target_grad else []
        return grads_a, grads_b

    def _setup_context_unit(ctx, inputs, output):
        features_a, features_b, channel_weights, weights = inputs[:4]
        ctx.save_for_backward(*features_a, *features_b, *channel_weights)
        ctx.num_layers = len(features_a)
        ctx.weights = list(weights)
        ctx.eps = inputs[4] if len(inputs) > 4 else 1e-10

    def _backward_unit(ctx, grad):
        saved, n = ctx.saved_tensors, ctx.num_layers
        a, b, c = list(saved[:n]), list(saved[n : 2 * n]), list(saved[2 * n :])
        need_a, need_b, need_w = ctx.needs_input_grad[:3]
        # The kernel unless a gradient of the gradient is wanted (create_graph=True: torch ops, differentiable)
        # or the channel weights need one (the kernel writes the features' gradients only).
        if not torch.is_grad_enabled() and not any(need_w) and has_unit_kernel(a[0].device.type):
            input_grad, target_grad = any(need_a), any(need_b)
            grads_a, grads_b = torch.ops.perceptloss.unit_feature_distance_backward(
                grad, a, b, c, ctx.weights, ctx.eps, input_grad, target_grad)
            grads_a = [g if k else None for g, k in zip(grads_a, need_a)] if input_grad else [None] * n
            grads_b = [g if k else None for g, k in zip(grads_b, need_b)] if target_grad else [None] * n
            return grads_a, grads_b, [None] * n, None, None
        grads_a, grads_b, grads_w = _unit_feature_distance_backward(
            grad, a, b, c, ctx.weights, ctx.eps, need_a, need_b, need_w)
        return grads_a, grads_b, grads_w, None, None

    torch.library.register_autograd(
        "perceptloss::unit_feature_distance", _backward_unit, setup_context=_setup_context_unit)

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

    @torch.library.register_fake("perceptloss::l2_pool3x3")
    def _l2_pool3x3_fake(x, window):
        n, c, h, w = x.shape
        return torch.empty((n, c, (h + 1) // 2, (w + 1) // 2), dtype=x.dtype, device=x.device,
                           memory_format=torch.channels_last)

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
