"""Shared pieces of the benchmarks: shapes, contenders, a timer, copy bandwidth, environment description.

Methodology: every contender gets the same inputs; each measurement is preceded by warm-up calls; CUDA work is
synchronised (events) before a clock is read; the reported figure is the median of the repeats. Compiled
contenders are built once (``CompiledOnce``) so that no timed call pays for building a ``torch.compile`` wrapper.
Every result file starts with ``describe_machine``: CPU model and flags, ATen's capability, oneDNN's ISA limit,
the fused operator's CPU kernel level (or the GPU), and whether a lower ISA is emulated.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
import platform
import random
import re
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

import perceptloss
from perceptloss.functional import feature_distance_reference

#: VGG19 (channels, downsampling) at relu1_1 ... relu5_1.
VGG19_RELU_X1 = [(64, 1), (128, 2), (256, 4), (512, 8), (512, 16)]
CASES = {"N64-64px": (64, 64), "N16-256px": (16, 256), "N4-32px": (4, 32)}
#: The cases the published tables use (N4-32px is a quick one for smoke tests).
DEFAULT_CASES = ("N64-64px", "N16-256px")


def vgg19_feature_shapes(n: int, size: int) -> list[tuple[int, int, int, int]]:
    return [(n, c, size // s, size // s) for c, s in VGG19_RELU_X1]


def make_features(case: str, dtype: torch.dtype, device: str, requires_grad: bool, seed: int = 0):
    n, size = CASES[case]
    g = torch.Generator(device=device).manual_seed(seed)
    shapes = vgg19_feature_shapes(n, size)
    a = [torch.randn(s, generator=g, device=device, dtype=dtype).requires_grad_(requires_grad) for s in shapes]
    b = [torch.randn(s, generator=g, device=device, dtype=dtype) for s in shapes]
    return a, b, [1.0] * len(shapes)


def eager_mse(a, b, w):
    """What a user writes: a sum over layers of w * mse_loss (batch mean) -> scalar."""
    return sum(wl * F.mse_loss(x.float(), y.float()) for x, y, wl in zip(a, b, w))


def eager_per_sample(a, b, w):
    """The per-sample variant: (N, L) like the fused operator."""
    return feature_distance_reference(a, b, w)


def fused(a, b, w):
    return torch.ops.perceptloss.feature_distance(a, b, w)


class CompiledOnce:
    """``torch.compile(fn, **options)``, built on the first call and reused by every later call.

    (``dict.setdefault(key, torch.compile(fn))`` evaluates ``torch.compile`` on every call, which builds a
    new wrapper each time and adds its cost to every timed call.) Dynamo keeps one compiled graph per input
    signature (shapes, dtypes, grad mode) on ``fn``'s code object; ``RECOMPILE_LIMIT`` signatures are allowed
    so that a benchmark alternating dtypes and shapes never falls back to eager silently.
    """

    def __init__(self, fn: Callable, **options: object) -> None:
        self.fn, self.options = fn, options
        self.compiled: Callable | None = None
        self.__name__ = f"compiled_{fn.__name__}"

    def __call__(self, *args: object) -> object:
        if self.compiled is None:
            allow_recompiles(RECOMPILE_LIMIT)
            self.compiled = torch.compile(self.fn, **self.options)
        return self.compiled(*args)


#: Input signatures dynamo may compile for one function (2 shapes x 3 dtypes x grad / no-grad, with room).
RECOMPILE_LIMIT = 64


def allow_recompiles(limit: int) -> None:
    """Raise dynamo's per-function recompile limit to at least ``limit`` (its name changed across versions)."""
    import torch._dynamo.config as config

    for name in ("recompile_limit", "cache_size_limit"):
        if isinstance(getattr(config, name, None), int) and getattr(config, name) < limit:
            setattr(config, name, limit)


#: torch.compile of the per-sample eager distance: one compiled function for every benchmark in the process.
compiled_eager = CompiledOnce(eager_per_sample, dynamic=False)


OPERATOR_CONTENDERS = {
    "fused op": fused,
    "eager mse_loss sum": eager_mse,
    "eager per-sample": eager_per_sample,
    "torch.compile per-sample": compiled_eager,
}


class HandWrittenVGGLoss(torch.nn.Module):
    """The 20-line perceptual loss a careful user writes: torchvision VGG19 truncated after the deepest tap,
    frozen, in-place ReLU, a clone at each tap (the next in-place ReLU would overwrite it), ``mse_loss`` summed
    over layers, the target's features under ``no_grad``. ImageNet normalisation. Random weights (same cost)."""

    def __init__(self, taps=(1, 6, 11)):  # relu1_1, relu2_1, relu3_1 (the DFC-VAE's VAE-123)
        super().__init__()
        import torchvision

        self.taps = set(taps)
        self.net = torchvision.models.vgg19(weights=None).features[: max(taps) + 1].eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def features(self, x):
        h, out = (x - self.mean) / self.std, []
        for i, m in enumerate(self.net):
            h = m(h)
            if i in self.taps:
                out.append(h.clone())
        return out

    def forward(self, x, y):
        with torch.no_grad():
            fy = self.features(y)
        return sum(F.mse_loss(a, b) for a, b in zip(self.features(x), fy))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], device: str, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of ``fn`` in seconds (CUDA: between events after synchronisation)."""
    return interleaved_medians({"fn": fn}, device, warmup, repeats)["fn"]


def time_once(fn: Callable[[], object], device: str, clock: Callable[[], float] = time.perf_counter) -> float:
    """Wall time of one call in seconds (CUDA: between events, synchronised); on the CPU ``clock`` reads the time
    (``time.process_time``: the CPU time of this process, for a machine shared with other jobs)."""
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    t = clock()
    fn()
    return clock() - t


def interleaved_medians(fns: dict[str, Callable[[], object]], device: str, warmup: int = 3,
                        repeats: int = 10, seed: int = 0,
                        clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median wall time in seconds of each of ``fns``, timed round-robin on the same inputs, in a new order per round.

    Interleaving spreads the noise of a shared machine (other jobs, frequency changes) over every contender
    instead of letting it hit whichever contender happened to run at that moment. The order is shuffled every
    round (seeded: reproducible) because a fixed order is biased: whatever runs first in a cell finds the caches
    holding the previous cell's data, and the contenders after it find part of their own inputs still in the
    last-level cache (measured on a 32 MiB L3: the fused bfloat16 forward+backward at N=64 64x64, 128 MiB of
    inputs, is 6.5% slower right after another cell than right after itself).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    rng = random.Random(seed)
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        rng.shuffle(names)
        for name in names:
            times[name].append(time_once(fns[name], device, clock))
    return {name: statistics.median(ts) for name, ts in times.items()}


def matrix_rate(dtype: torch.dtype, device: str = "cpu", size: int = 2048, repeats: int = 5) -> float:
    """The hardware's matrix rate in this run, FLOP/s: the median of ``repeats`` ``size``^3 matmuls in ``dtype``
    (2 * size^3 operations each; bfloat16 runs on AMX / AVX512-BF16 where present, float32 on the FMA units).

    The yardstick of a network's compute fraction: a convolution network cannot run faster than its FLOPs at this
    rate, and the fraction it reaches says how much time goes outside the matrix engines (elementwise passes,
    casts, layout conversions, the interpreter)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=g, device=device).to(dtype)
    b = torch.randn(size, size, generator=g, device=device).to(dtype)
    return 2 * size ** 3 / median_time(lambda: torch.mm(a, b), device, warmup=2, repeats=repeats)


def count_flops(fn: Callable[[], object]) -> int:
    """The floating-point operations of one call of ``fn`` as torch's FLOP counter counts them: matrix
    multiplications and convolutions, forward and backward (the input gradient only where the weights are
    frozen), 2 per multiply-add; elementwise operations are not counted. The trunks' convolution + ReLU primitive
    (oneDNN's ``_convolution_pointwise``, ``perceptloss._conv_relu``), which the counter's table does not know, is
    counted as the convolution it is."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import conv_flop_count, flop_registry

    pointwise = getattr(getattr(torch.ops.mkldnn, "_convolution_pointwise", None), "default", None)

    class Counter(TorchDispatchMode):  # FlopCounterMode's count without its module tracker, which refuses
        def __init__(self) -> None:    # torch.autograd.grad (the benchmarks' backward)
            super().__init__()
            self.total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if func is pointwise:  # (x, weight, bias, padding, stride, dilation, groups, ...)
                self.total += conv_flop_count(list(args[0].shape), list(args[1].shape), list(out.shape), False)
            elif formula is not None:
                self.total += formula(*args, **kwargs, out_val=out)
            return out

    counter = Counter()
    with counter:
        fn()
    return int(counter.total)


def read_floor(a, b, w):
    """Reads every element of a and b once (one dot product per layer): the least a forward can do."""
    return [torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)]


def read_floor_sum(a, b, w):
    """Reads every element of a and b once (a sum per tensor, accumulated in float)."""
    return [x.sum() + y.sum() for x, y in zip(a, b)]


def plain_op_twin(a, b) -> Callable[[], object]:
    """The traffic of a forward+backward done with plain eager ops into memory that is already mapped.

    Per layer: one pass reading a and b (``torch.dot`` in float32/float64, ``sum`` in reduced precision,
    whichever reads at the floor), then ``torch.sub(a, b, out=g)`` into a buffer allocated once (two reads, one
    write with ordinary stores, no page faults). This is what any backward that writes the gradient with
    ordinary stores into recycled memory costs at best, e.g. a compiled backward when the allocator hands it
    memory that is already mapped.
    """
    a = [t.detach() for t in a]
    out = [torch.empty_like(t) for t in a]
    reduced = a[0].dtype in (torch.bfloat16, torch.float16)

    def run():
        for x, y, g in zip(a, b, out):
            if reduced:
                x.sum() + y.sum()
            else:
                torch.dot(x.reshape(-1), y.reshape(-1))
            torch.sub(x, y, out=g)
    return run


def proc_status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (Linux), e.g. "VmRSS" or "VmHWM" (peak), in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def copy_bandwidth(device: str, nbytes: int = 1 << 28) -> float:
    """Measured device copy bandwidth in bytes/s (read + write counted), from a large tensor copy."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), device, warmup=2, repeats=7)
    return 2 * nbytes / t


_CPU_FLAGS = {"AVX2": ("avx2",), "AVX-512": ("avx512f",), "AVX512-BF16": ("avx512_bf16",),
              "AMX": ("amx_tile", "amx_bf16")}
#: Settings that lower the instruction sets the libraries use (to emulate a smaller CPU on a bigger one).
EMULATION_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            block = f.read().split("\n\n", 1)[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines()) if k.strip()}


def cpu_flags(info: dict[str, str] | None = None) -> dict[str, bool]:
    """Which of AVX2, AVX-512 (F), AVX512-BF16 and AMX this CPU reports (/proc/cpuinfo flags)."""
    flags = set((info if info is not None else _cpuinfo()).get("flags", "").split())
    return {name: any(f in flags for f in names) for name, names in _CPU_FLAGS.items()}


def cpu_microarchitecture(info: dict[str, str] | None = None) -> str:
    """A short name of the core: zen2 / zen3 / zen4 / zen5 for AMD (from the CPU family and model), the vendor
    otherwise (e.g. "intel"), the machine type where /proc/cpuinfo says nothing."""
    info = info if info is not None else _cpuinfo()
    vendor = info.get("vendor_id", "")
    try:
        family, model = int(info.get("cpu family", "")), int(info.get("model", ""))
    except ValueError:
        family = model = -1
    if vendor == "AuthenticAMD":
        if family == 0x17:
            return "zen2" if model >= 0x30 else "zen1"
        if family == 0x19:
            return "zen4" if (0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF) else "zen3"
        if family == 0x1A:
            return "zen5"
        return "amd"
    if vendor == "GenuineIntel":
        return "intel"
    return (platform.machine() or "cpu").lower()


def emulation() -> dict[str, str]:
    """The ISA-lowering variables that are set (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA)."""
    return {k: os.environ[k] for k in EMULATION_VARS if os.environ.get(k)}


def aten_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - torch < 2.1
        return "unknown"


def kernel_level() -> str:
    """The fused operator's CPU kernel level in use, or why there is none."""
    try:
        return perceptloss.backends.cpu.kernel_level()
    except Exception as e:  # noqa: BLE001 - no extension
        return f"none ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})"


def cpu_kind() -> str:
    """File-name tag of the CPU as the benchmark sees it, e.g. "zen5-avx512bf16", or "zen5-emulated-avx2" when
    ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA lower it."""
    arch = cpu_microarchitecture()
    env = emulation()
    if env:
        level = env.get("ATEN_CPU_CAPABILITY") or env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA")
        return f"{arch}-emulated-{re.sub(r'[^a-z0-9]+', '', level.lower())}"
    flags = cpu_flags()
    top = next((tag for name, tag in (("AMX", "amx"), ("AVX512-BF16", "avx512bf16"), ("AVX-512", "avx512"),
                                      ("AVX2", "avx2")) if flags[name]), "baseline")
    return f"{arch}-{top}"


def gpu_kind(device: str = "cuda") -> str:
    """File-name tag of the GPU, e.g. "h200" for "NVIDIA H200"."""
    name = torch.cuda.get_device_name(torch.device(device)).lower().replace("nvidia", "")
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "gpu"


def device_kind(device: str) -> str:
    return gpu_kind(device) if device.startswith("cuda") else cpu_kind()


def machine_info(device: str) -> dict[str, str]:
    """What the numbers depend on, as (field, value): processor, instruction sets, levels, versions."""
    info = _cpuinfo()
    flags = cpu_flags(info)
    cpu = info.get("model name") or platform.processor() or platform.machine()
    ident = f"{info.get('vendor_id', '?')} family {info.get('cpu family', '?')} model {info.get('model', '?')}"
    out = {"CPU": f"{cpu} ({ident}, {cpu_microarchitecture(info)}), {os.cpu_count()} logical CPUs",
           "CPU flags": ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in flags.items()),
           "ATen CPU capability": aten_capability(),
           "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY") or "not set",
           "ONEDNN_MAX_CPU_ISA": (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
                                  or "not set"),
           "perceptloss CPU kernel level": kernel_level()}
    try:
        from perceptloss import hardware

        native, reason = hardware.bf16_native(device)
        out["dtype='auto' picks"] = f"{str(hardware.auto_dtype(device)).replace('torch.', '')} ({reason})"
    except Exception:  # noqa: BLE001 - a perceptloss without the rule
        pass
    env = emulation()
    if env:
        out["EMULATED"] = ("yes: " + " ".join(f"{k}={v}" for k, v in env.items()) +
                           " lower the instruction sets ATen / oneDNN / our kernels use below what this CPU has")
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.device(device))
        out["GPU"] = (f"{p.name}, compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
                      f"{p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    out["versions"] = (f"torch {torch.__version__}, perceptloss {perceptloss.__version__} (fused op built: "
                       f"{perceptloss.HAS_EXT}), python {platform.python_version()}")
    out["threads"] = str(torch.get_num_threads())
    return out


def describe_machine(device: str) -> str:
    """``machine_info`` as markdown lines (a list), for the head of every result file."""
    return "\n".join(f"- {k}: {v}" for k, v in machine_info(device).items())


def result_head(title: str, device: str, script: str, argv: list[str] | None) -> list[str]:
    """The head of a result file: ``# title (device, kind, date)``, the machine, and the command that reproduces
    the run (the emulation variables in effect, then ``python benchmarks/<script>`` with ``argv``, sys.argv's
    when None)."""
    env = " ".join(f"{k}={v}" for k, v in emulation().items())
    args = " ".join(sys.argv[1:] if argv is None else argv)
    cmd = f"{env + ' ' if env else ''}python benchmarks/{script} {args}".strip()
    today = datetime.date.today().isoformat()
    return [f"# {title} ({device}, {device_kind(device)}, {today})", "", describe_machine(device), "",
            f"Reproduce: `{cmd}`", ""]


def add_memory_option(parser) -> None:
    parser.add_argument("--retain-freed-memory", action="store_true",
                        help="call perceptloss.backends.cpu.retain_freed_memory() first, as `perceptloss score` does "
                             "(glibc keeps freed memory mapped for the next step); result file kind '<kind>-retained'")


def apply_memory_option(args) -> str:
    """Applies ``--retain-freed-memory``; returns the suffix of the result file's kind ('' or '-retained')."""
    if not args.retain_freed_memory:
        return ""
    from perceptloss.backends.cpu import retain_freed_memory

    if not retain_freed_memory():
        raise SystemExit("--retain-freed-memory: this C library is not glibc; nothing to retain")
    return "-retained"


def result_file(output: str | None, kind: str, device: str = "cpu") -> Path:
    """``output`` as a Path, or by default ``benchmarks/results/<device>-<date>-<machine kind>-<kind>.md``."""
    if output:
        return Path(output)
    today = datetime.date.today().isoformat()
    return Path(__file__).resolve().parent / "results" / f"{device}-{today}-{device_kind(device)}-{kind}.md"


def write_result(text: str, out: Path) -> None:
    """Write a result file atomically (a temporary file renamed), creating its folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)


def print_and_write(text: str, out: Path | None) -> None:
    """Print a result table and, when ``out`` is given, write it there atomically (``write_result``)."""
    print(text)
    if out:
        write_result(text, out)
