"""The first-use check of the fused kernels (perceptloss.backends.probe), on the CPU with injected kernels.

No GPU is needed: ``probe_kernels(device, op=...)`` takes the operator it checks, and a ``DeviceProbes`` record
that probes the "cpu" device type (instead of "cuda") with a broken operator stands in for a CUDA build whose
kernels are wrong. The fused operator itself then still runs where the probe passed, so the tests see which
path ``feature_distance(fused=None)`` took (the operator's autograd node, or the reference's).
"""
import warnings

import pytest
import torch

import perceptloss
from perceptloss import __main__ as cli
from perceptloss.backends import probe
from perceptloss.backends.probe import DeviceProbes, FusedKernelProbeWarning, probe_kernels
from perceptloss.functional import feature_distance, feature_distance_reference

from .helpers import assert_equal

needs_cpu_kernel = pytest.mark.skipif(not perceptloss.backends.has_kernel("cpu"), reason="fused operator not built")


def off_by_one_percent(a, b, w, p):
    return feature_distance_reference(a, b, w, p) * 1.01


def wrong_target_gradient(a, b, w, p):
    """Right values, a wrong gradient for the targets: adds 0 whose derivative is 1 per target element."""
    out = feature_distance_reference(a, b, w, p)
    zero = sum((t.float() - t.float().detach()).flatten(1).sum(1) for t in b)
    return out + zero[:, None]


def nan_in_bfloat16(a, b, w, p):
    out = feature_distance_reference(a, b, w, p)
    return out * float("nan") if a[0].dtype == torch.bfloat16 else out


def float64_output(a, b, w, p):
    return feature_distance_reference(a, b, w, p).double()


def no_kernel_image(a, b, w, p):
    raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore lines")


def took_the_operator(out: torch.Tensor) -> bool:
    return "perceptloss_feature_distance" in type(out.grad_fn).__name__


def features(seed=0):
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(2, 3, 5, 5, generator=g).requires_grad_(), torch.randn(2, 4, 2, 2, generator=g).requires_grad_()]
    b = [torch.randn(2, 3, 5, 5, generator=g), torch.randn(2, 4, 2, 2, generator=g)]
    return a, b


@pytest.fixture
def probing_cpu(monkeypatch):
    """Makes the process's record probe the "cpu" device type with the operator given: ``probing_cpu(op)``."""
    def install(op=None) -> DeviceProbes:
        record = DeviceProbes({"cpu"}, op=op)
        monkeypatch.setattr(probe, "PROBES", record)
        return record
    return install


# ------------------------------------------------------------------------------------------- the probe itself


def test_probe_passes_a_correct_operator_in_every_dtype_and_norm():
    outcome = probe_kernels("cpu", op=feature_distance_reference)
    assert outcome.status == "passed" and outcome.usable
    assert "14 values-and-gradients checks (float32/bfloat16/float16, p=2 and p=1)" in outcome.detail


@needs_cpu_kernel
def test_probe_passes_the_built_cpu_kernels():
    assert probe_kernels("cpu").status == "passed"


@pytest.mark.parametrize("op, expected", [
    (off_by_one_percent,
     "float32, p=2, odd sizes, a layer of two work chunks: values: relative error 1.00e-02 > 1e-05"),
    (wrong_target_gradient, "float32, p=2, odd sizes, a layer of two work chunks: gradient of target layer "),
    (nan_in_bfloat16, "bfloat16, p=2, odd sizes, a layer of two work chunks: values: relative error inf"),
    (float64_output, "float32, p=2, odd sizes, a layer of two work chunks: output (2, 2) torch.float64 on cpu, "
                     "expected (2, 2) float32 on cpu"),
    (no_kernel_image, "RuntimeError: CUDA error: no kernel image is available for execution on the device"),
])
def test_probe_says_what_failed(op, expected):
    outcome = probe_kernels("cpu", op=op)
    assert outcome.status == "failed" and not outcome.usable
    assert outcome.detail.startswith(expected), outcome.detail
    assert "more lines" not in outcome.detail


def test_probe_leaves_the_global_rng_and_grad_mode_alone():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    with torch.no_grad():
        assert probe_kernels("cpu", op=feature_distance_reference).status == "passed"
        assert not torch.is_grad_enabled()
    assert_equal(torch.rand(4), expected)


def test_results_before_any_fused_call():
    record = DeviceProbes()
    assert str(record.result("cuda:0")) == "not run yet" and not record.result("cuda:0").usable
    assert record.result("cpu").status == "not probed" and record.result("cpu").usable
    assert probe.result("cpu").status == "not probed"  # the process's record: the CPU kernels are tested


# ------------------------------------------------------------------------------ what fused=None does with it


@needs_cpu_kernel
def test_a_failed_probe_warns_once_and_the_reference_decides(probing_cpu):
    record = probing_cpu(off_by_one_percent)
    a, b = features()
    with pytest.warns(FusedKernelProbeWarning) as caught:
        out = feature_distance(a, b, [1.0, 0.5])
    assert len(caught) == 1
    message = str(caught[0].message)
    for part in ("first-use check on cpu", "values: relative error 1.00e-02", "pure-PyTorch reference",
                 "fused=True still runs the kernels", "python -m perceptloss info", "make gpu-check", "fused=False"):
        assert part in message, part
    assert not took_the_operator(out)
    assert_equal(out, feature_distance_reference(a, b, [1.0, 0.5]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per device: the second call is silent
        again = feature_distance(a, b, [1.0, 0.5])
    assert not took_the_operator(again)
    assert record.result("cpu").status == "failed" and "relative error" in str(probe.result("cpu"))


@needs_cpu_kernel
def test_a_passed_probe_lets_the_kernels_run_and_runs_once(probing_cpu):
    calls = []

    def counting(a, b, w, p):
        calls.append(a[0].dtype)
        return torch.ops.perceptloss.feature_distance(a, b, w, p)

    probing_cpu(counting)
    a, b = features()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = feature_distance(a, b)
        assert took_the_operator(out)
        probed = len(calls)
        assert probed == 14
        assert took_the_operator(feature_distance(a, b))
    assert len(calls) == probed  # once per process and device
    assert probe.result("cpu").status == "passed"


@needs_cpu_kernel
def test_fused_true_still_runs_the_kernels_after_a_failed_probe(probing_cpu):
    probing_cpu(no_kernel_image)
    a, b = features()
    with pytest.warns(FusedKernelProbeWarning, match="fused=True still runs the kernels"):
        out = feature_distance(a, b, fused=True)
    assert took_the_operator(out)
    assert not took_the_operator(feature_distance(a, b))  # fused=None: the reference


@needs_cpu_kernel
def test_fused_false_runs_no_probe(probing_cpu):
    record = probing_cpu(no_kernel_image)
    a, b = features()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feature_distance(a, b, fused=False)
    assert str(record.result("cpu")) == "not run yet"


@needs_cpu_kernel
def test_out_of_memory_is_not_recorded(probing_cpu):
    attempts = []

    def out_of_memory_once(a, b, w, p):
        attempts.append(1)
        if len(attempts) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")
        return torch.ops.perceptloss.feature_distance(a, b, w, p)

    record = probing_cpu(out_of_memory_once)
    a, b = features()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not took_the_operator(feature_distance(a, b))  # this call: the reference
        assert str(record.result("cpu")) == "not run yet"
        assert took_the_operator(feature_distance(a, b))  # probed again, passed
    assert record.result("cpu").status == "passed"


@needs_cpu_kernel
def test_the_probe_runs_eagerly_outside_the_compiled_graph(probing_cpu):
    seen = []

    def broken_and_watching(a, b, w, p):
        seen.append(type(a[0]))
        return off_by_one_percent(a, b, w, p)

    probing_cpu(broken_and_watching)
    torch.compiler.reset()
    a, b = features()
    # fused=True: the probe runs (and warns) but the kernels run all the same
    compiled = torch.compile(lambda x, y: feature_distance(x, y, fused=True), backend="aot_eager", fullgraph=True)
    with pytest.warns(FusedKernelProbeWarning):
        out = compiled(a, b)
    assert seen and set(seen) == {torch.Tensor}  # real tensors: run while tracing, not traced into the graph
    expected = feature_distance(a, b, fused=True)
    assert_equal(out, expected)
    count = len(seen)
    assert_equal(compiled(a, b), expected)
    assert len(seen) == count


@pytest.mark.parametrize("op, factor", [(feature_distance_reference, 2.0), (no_kernel_image, 3.0)])
def test_the_decision_is_a_constant_of_the_compiled_graph(probing_cpu, op, factor):
    probing_cpu(op)
    torch.compiler.reset()  # a graph compiled before baked in that record's answer

    def decide(x):
        return x * (2.0 if probe.fused_usable("cpu") else 3.0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FusedKernelProbeWarning)
        out = torch.compile(decide, backend="eager", fullgraph=True)(torch.ones(2))
    assert_equal(out, torch.full((2,), factor))


@needs_cpu_kernel
def test_fake_tensors_leave_the_probe_for_a_real_call(probing_cpu):
    from torch._subclasses.fake_tensor import FakeTensorMode

    record = probing_cpu(no_kernel_image)
    with FakeTensorMode():
        a, b = features()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = feature_distance(a, b)
    assert out.shape == (2, 2)
    assert str(record.result("cpu")) == "not run yet"


# -------------------------------------------------------------------------------------- python -m perceptloss info


@needs_cpu_kernel
@pytest.mark.parametrize("op, expected", [
    (None, "fused kernels' first-use check on cpu: passed: 14 values-and-gradients checks"),
    (off_by_one_percent, "fused kernels' first-use check on cpu: failed: float32, p=2, odd sizes"),
])
def test_info_prints_the_check_per_device(probing_cpu, capsys, op, expected):
    probing_cpu(op)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FusedKernelProbeWarning)
        assert cli.main(["info"]) == 0
    assert expected in capsys.readouterr().out


def test_info_checks_no_device_without_its_kernel(capsys):
    assert cli.main(["info"]) == 0
    has_cuda = perceptloss.backends.has_kernel("cuda") and torch.cuda.is_available()
    assert ("first-use check on cuda:0" in capsys.readouterr().out) == has_cuda
