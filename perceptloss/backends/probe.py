"""``perceptloss.backends.probe``: the fused CUDA kernels are checked on a device before they decide a number.

The CUDA kernels of the fused operator compile wherever nvcc exists, but a build can be wrong on a GPU it was
never run on. So before ``fused=None`` (the default) lets them compute anything on a CUDA device, a small probe
runs once per process and device: the operator's values and both gradients on a few layer lists (odd sizes, a
layer of several work chunks, channels_last, a misaligned storage offset, more layers than one launch, gradients
for the inputs only) in float32, bfloat16 and float16, for p = 2 and p = 1, against the same maths in float64
(norm-wise relative error, see :data:`TOLERANCES`). It takes a few milliseconds.

- **passed**: the kernels run on that device from then on.
- **failed** (a mismatch, a non-finite value or an error): one :class:`FusedKernelProbeWarning` says what failed
  and how to report it, and ``fused=None`` computes the distances on the pure-PyTorch reference path on that
  device (the same maths, slower). ``fused=True`` (explicitly asked) still runs the kernels: the warning says
  their results may be wrong.

Only device types in :data:`PROBED_DEVICE_TYPES` are probed (CUDA); the CPU kernels are checked by the test
suite on every build. Inside ``torch.compile`` the probe runs eagerly when the call is traced (through
``torch.compiler.assume_constant_result``: never traced into the graph), and the graph keeps the path it chose.
Where it cannot run (during CUDA-graph capture, under a fake-tensor mode) the call takes the reference path and
the probe runs at the next eager call. ``python -m perceptloss info`` runs it on every visible GPU and prints the
result; ``make gpu-check`` (a source checkout) is the full check.

>>> import perceptloss
>>> perceptloss.backends.probe.result("cpu").status   # the CPU kernels are checked by the test suite
'not probed'
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

from .._ops import has_kernel

#: Device types whose fused kernels must pass the probe before ``fused=None`` uses them.
PROBED_DEVICE_TYPES = frozenset({"cuda"})

#: Largest norm-wise relative error ``||got - expected|| / ||expected||`` accepted, per feature dtype: values
#: accumulate in float32 whatever the dtype; gradients come back in the features' dtype (rounded to it).
TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}



@dataclass(frozen=True)
class _Case:
    """One layer list the probe checks: N samples, per-layer (C, H, W), and the paths of the kernels it takes."""

    n: int
    shapes: tuple[tuple[int, int, int], ...]
    what: str
    channels_last_first_layer: bool = False
    misaligned_last_target: bool = False
    targets_need_grad: bool = True
    float32_only: bool = False


_CASES = (
    _Case(2, ((3, 5, 7), (16, 32, 33)), "odd sizes, a layer of two work chunks"),
    _Case(3, ((8, 6, 5), (5, 1, 1)), "channels_last, a misaligned storage offset, gradients of the inputs only",
          channels_last_first_layer=True, misaligned_last_target=True, targets_need_grad=False),
    _Case(1, ((2, 3, 3),) * 26, "26 layers (two launch groups)", float32_only=True),
)

Status = Literal["not run", "passed", "failed", "not probed"]


class FusedKernelProbeWarning(UserWarning):
    """The fused kernels failed their first-use check on a device: ``fused=None`` uses the reference path there.

    Issued once per process and device; ``perceptloss.backends.probe.result(device)`` holds the reason. Also
    issued once when the check cannot run because a CUDA graph is being captured (that call takes the reference).
    """


@dataclass(frozen=True)
class ProbeResult:
    """The probe's outcome on one device.

    Attributes:
        device: the device, e.g. ``"cuda:0"``.
        status: ``"not run"`` (no fused call on it yet), ``"passed"``, ``"failed"``, or ``"not probed"`` (a
            device type outside :data:`PROBED_DEVICE_TYPES`, e.g. the CPU, whose kernels the tests check).
        detail: what was checked (passed) or what failed, with the numbers.
    """

    device: str
    status: Status
    detail: str = ""

    @property
    def usable(self) -> bool:
        """Whether ``fused=None`` runs the fused kernels on this device."""
        return self.status in ("passed", "not probed")

    def __str__(self) -> str:
        if self.status == "not run":
            return f"not run: {self.detail}" if self.detail else "not run yet"
        return f"{self.status}: {self.detail}" if self.detail else self.status


def _features(n: int, shapes: Sequence[tuple[int, int, int]], dtype: torch.dtype, device: torch.device,
              seed: int) -> list[torch.Tensor]:
    """Random (n, C, H, W) feature maps from a private generator (the global RNG is left alone)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, *s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype) for s in shapes]


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` one element into its storage (not 16-byte aligned: the kernels' scalar path)."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = flat[1:].view(t.shape)
    out.copy_(t)
    return out


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """``||got - expected|| / ||expected||`` in float64 (inf where ``got`` is not finite)."""
    got = got.double()
    error = torch.linalg.vector_norm(got - expected) / torch.linalg.vector_norm(expected).clamp_min(1e-300)
    return torch.where(torch.isfinite(got).all(), error, torch.full_like(error, float("inf")))


def _check_case(op: Callable, case: _Case, seed: int, dtype: torch.dtype, p: int, device: torch.device) -> str | None:
    """The operator on one case against the maths in float64; None when it passes, else what differs."""
    n, shapes = case.n, case.shapes
    a = _features(n, shapes, dtype, device, seed=2 * seed)
    b = _features(n, shapes, dtype, device, seed=2 * seed + 1)
    if case.channels_last_first_layer:
        a[0] = a[0].contiguous(memory_format=torch.channels_last)
        b[0] = b[0].contiguous(memory_format=torch.channels_last)
    if case.misaligned_last_target:
        b[-1] = _misaligned(b[-1])
    weights = [0.5 + l for l in range(len(shapes))]
    a = [t.requires_grad_() for t in a]
    b = [t.requires_grad_(case.targets_need_grad) for t in b]
    out = op(a, b, weights, p)
    if tuple(out.shape) != (n, len(shapes)) or out.dtype != torch.float32 or out.device != device:
        return (f"output {tuple(out.shape)} {out.dtype} on {out.device}, "
                f"expected ({n}, {len(shapes)}) float32 on {device}")
    upstream = torch.rand(out.shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    wrt = a + b if case.targets_need_grad else a
    grads = torch.autograd.grad(out, wrt, upstream.to(device=device, dtype=out.dtype))
    a64 = [t.detach().double().requires_grad_() for t in a]
    b64 = [t.detach().double().requires_grad_(case.targets_need_grad) for t in b]
    expected = torch.stack([w * (x - y).abs().pow(p).flatten(1).mean(1) for x, y, w in zip(a64, b64, weights)], 1)
    expected_grads = torch.autograd.grad(expected, a64 + b64 if case.targets_need_grad else a64, upstream.to(device))
    names = ["values"] + [f"gradient of {role} layer {l}" for role in ("input", "target") for l in range(len(a))]
    for name, g, t in zip(names[1:], grads, wrt):
        if g is None or g.shape != t.shape or g.dtype != t.dtype:
            return f"{name}: {None if g is None else (tuple(g.shape), g.dtype)}, expected {(tuple(t.shape), t.dtype)}"
    errors = torch.stack([_relative_error(out, expected)]
                         + [_relative_error(g, e) for g, e in zip(grads, expected_grads)]).tolist()
    worst = max(range(len(errors)), key=lambda i: errors[i])
    if errors[worst] <= TOLERANCES[dtype]:
        return None
    return f"{names[worst]}: relative error {errors[worst]:.2e} > {TOLERANCES[dtype]:.0e}"


def probe_kernels(device: torch.device | str, op: Callable | None = None) -> ProbeResult:
    """Runs every check of the probe on ``device`` now and returns the outcome; records and warns nothing.

    Args:
        device: where to run, e.g. ``"cuda:0"``.
        op: the operator to check, called as ``op(inputs, targets, weights, p)``; default
            ``torch.ops.perceptloss.feature_distance`` (the tests pass a broken one).

    Returns:
        A :class:`ProbeResult` with status ``"passed"`` or ``"failed"`` (an error counts as failed), or
        ``"not run"`` when the device ran out of memory (not the kernels' fault).
    """
    device = torch.device(device)
    op = op if op is not None else torch.ops.perceptloss.feature_distance
    dtypes = [torch.float32, torch.bfloat16, torch.float16]  # every GPU stores bf16: a user can pass it on any
    checked = 0
    try:
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            for dtype in dtypes:
                for p in (2, 1):
                    for seed, case in enumerate(_CASES):
                        if case.float32_only and dtype != torch.float32:
                            continue
                        problem = _check_case(op, case, seed, dtype, p, device)
                        if problem is not None:
                            return ProbeResult(str(device), "failed", f"{str(dtype).replace('torch.', '')}, p={p}, "
                                               f"{case.what}: {problem}")
                        checked += 1
    except torch.cuda.OutOfMemoryError as e:  # not the kernels' fault: not recorded, tried again later
        return ProbeResult(str(device), "not run", f"out of memory: {(str(e).strip().splitlines() or [''])[0]}")
    except Exception as e:  # a kernel error (no kernel image for this GPU, a launch failure, ...)
        first_line = (str(e).strip().splitlines() or [""])[0]
        return ProbeResult(str(device), "failed", f"{type(e).__name__}: {first_line}")
    names = "/".join(str(d).replace("torch.", "") for d in dtypes)
    return ProbeResult(str(device), "passed", f"{checked} values-and-gradients checks ({names}, p=2 and p=1) "
                       "within tolerance")


def _key(device: torch.device | str) -> torch.device:
    """``device`` with an index where it has one (``cuda`` is the current CUDA device)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _fake_tensors_active() -> bool:
    """True under a tensor mode that computes nothing (FakeTensorMode, e.g. in torch.export)."""
    return type(torch.empty(0)) is not torch.Tensor


def _failure_message(outcome: ProbeResult) -> str:
    """The warning for a failed probe: what failed, what happens now, how to report it."""
    return (
        f"perceptloss: the fused kernels failed their first-use check on {outcome.device}: {outcome.detail}. "
        f"fused=None (the default) now computes the distances with the pure-PyTorch reference on "
        f"{outcome.device} (the same maths, slower); fused=True still runs the kernels, whose results may be "
        "wrong. Please report it with the output of `python -m perceptloss info` (and, in a source checkout of "
        "perceptloss, of `make gpu-check`); fused=False chooses the reference path explicitly."
    )


class DeviceProbes:
    """The per-process record of the probe: each device's result, probed at its first fused call.

    Args:
        device_types: the device types probed (default :data:`PROBED_DEVICE_TYPES`); the others are
            ``"not probed"`` and always usable.
        op: the operator checked (default the fused operator); see :func:`probe_kernels`.
    """

    def __init__(self, device_types: frozenset[str] | set[str] = PROBED_DEVICE_TYPES, op: Callable | None = None):
        self.device_types = frozenset(device_types)
        self.op = op
        self.results: dict[str, ProbeResult] = {}
        self.lock = threading.Lock()
        self.capture_warned: set[str] = set()

    def devices(self) -> list[str]:
        """The devices of the probed types that this process sees and the operator has a kernel for."""
        found = []
        for kind in sorted(self.device_types):
            if not has_kernel(kind):
                continue
            found += ["cpu"] if kind == "cpu" else [f"{kind}:{i}" for i in range(getattr(torch, kind).device_count())]
        return found

    def result(self, device: torch.device | str) -> ProbeResult:
        """The recorded outcome on ``device`` ("not run" before its first fused call)."""
        device = _key(device)
        if device.type not in self.device_types:
            return ProbeResult(str(device), "not probed", f"the {device.type} kernels are checked by the test suite")
        return self.results.get(str(device), ProbeResult(str(device), "not run"))

    def usable(self, device: str) -> bool:
        """Whether ``fused=None`` runs the fused kernels on ``device`` ("cuda:0", "cpu"), probing it first if needed.

        The per-call fast path: one dictionary look-up once the device is known.
        """
        known = self.results.get(device)
        if known is not None:
            return known.usable
        if torch.device(device).type not in self.device_types:
            self.results[device] = self.result(device)
            return True
        return self.ensure(device).usable

    def ensure(self, device: torch.device | str) -> ProbeResult:
        """The outcome on ``device``, running the probe first if it has not run there; warns once on failure.

        Where the probe cannot run now (CUDA-graph capture, fake tensors) the result stays "not run".
        """
        device = _key(device)
        known = self.result(device)
        if known.status != "not run":
            return known
        with self.lock:
            known = self.result(device)
            if known.status != "not run":
                return known
            if _fake_tensors_active():
                return known
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                if str(device) not in self.capture_warned:
                    self.capture_warned.add(str(device))
                    warnings.warn(f"perceptloss: the fused kernels' first-use check cannot run during CUDA-graph "
                                  f"capture: this captured call on {device} uses the pure-PyTorch reference "
                                  "distance. Make one call on the device before capturing (the usual warm-up) to "
                                  "capture the fused kernels.", FusedKernelProbeWarning, stacklevel=2)
                return known
            outcome = probe_kernels(device, self.op)
            if outcome.status == "not run":  # out of memory: tried again at the next call
                return outcome
            self.results[str(device)] = outcome
        if outcome.status == "failed":
            warnings.warn(_failure_message(outcome), FusedKernelProbeWarning, stacklevel=2)
        return outcome


#: The process's record, used by ``perceptloss.feature_distance`` (tests replace it to inject a broken operator).
PROBES = DeviceProbes()


def result(device: torch.device | str) -> ProbeResult:
    """The probe's outcome on ``device`` in this process: not run yet, passed, failed (with the reason), or not
    probed (device types whose kernels the test suite checks, e.g. ``"cpu"``)."""
    return PROBES.result(device)


def ensure(device: torch.device | str) -> ProbeResult:
    """Runs the probe on ``device`` unless it has run there (warns once if it fails) and returns the outcome."""
    return PROBES.ensure(device)


@torch.compiler.assume_constant_result
def fused_usable(device: str) -> bool:
    """Whether ``fused=None`` may run the fused kernels on ``device`` (probing it on first use).

    Under ``torch.compile`` this runs eagerly while the call is traced and its answer is a constant of the
    graph: the probe is never traced.
    """
    return PROBES.usable(device)


__all__ = ["FusedKernelProbeWarning", "ProbeResult", "result", "ensure", "probe_kernels", "DeviceProbes", "PROBES",
           "PROBED_DEVICE_TYPES", "TOLERANCES", "fused_usable"]
