"""The ReLU a frozen network runs while torch.compile traces a CPU training graph: its backward reads its output.

A ReLU's gradient is ``grad`` where its output is positive and 0 elsewhere. Traced as ``torch.relu``, the
compiled training graph keeps a boolean mask (``output <= 0``, a quarter of the output's bytes) for the backward,
and inductor's CPU code writes and reads boolean tensors slowly (torch 2.14: ``x <= 0`` into a bool tensor takes
about 9x the eager time, a ReLU's forward+backward 7x), which made a compiled VGG loss slower than the eager one.
``relu_keeping_output`` multiplies the gradient by ``sign(output)`` instead (1 where positive, 0 at 0; a float):
the graph keeps the output itself, as eager autograd does, and writes no boolean tensor. Same values and
gradients as ``torch.relu`` for finite inputs and gradients (where the output is NaN the gradient is NaN, where
eager passes it through; the input checks refuse NaN images).
"""
from __future__ import annotations

import torch


class _ReluKeepingOutput(torch.autograd.Function):
    generate_vmap_rule = True  # torch.compile(torch.func.vmap(loss)) traces it too

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (output,) = ctx.saved_tensors
        return grad * output.sign()


def relu_keeping_output(x: torch.Tensor) -> torch.Tensor:
    """``torch.relu(x)`` whose backward multiplies by the sign of the saved output (no boolean mask)."""
    return _ReluKeepingOutput.apply(x)


def keeps_output_while_tracing(x: torch.Tensor) -> bool:
    """True where a ReLU on ``x`` should be ``relu_keeping_output``: torch.compile is tracing a graph that will
    differentiate through it (grad enabled, ``x`` requires grad) on the CPU. A constant of the traced graph.
    Elsewhere (eager; no gradient, e.g. evaluation, where inductor fuses convolution + ReLU; CUDA, whose compiled
    boolean masks are fast and save memory) the network's own ReLU runs."""
    return (torch.compiler.is_compiling() and torch.is_grad_enabled() and x.requires_grad
            and x.device.type == "cpu")
