"""scripts/gpu_check.sh and its driver, on the CPU: the script parses, its CPU mode runs the same phases with
small sizes, a failed phase is recorded without stopping the others, and the operator driver passes on the CPU
kernels (the same cases compute-sanitizer runs on the GPU)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import perceptloss

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples" / "dfcvae"))

import gpu_driver  # noqa: E402

OUT_FILES = {"info.txt", "tests.txt", "sanitizer.txt", "losses.txt", "train.txt", "bench-operator.md",
             "bench-loss.md", "summary.txt"}


def run_check(out: Path, phases: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_PHASES": phases, **env}
    return subprocess.run(["bash", str(SCRIPT), "--cpu", str(out)], env=full, capture_output=True, text=True,
                          timeout=600)


def summary_lines(out: Path) -> dict[str, str]:
    lines = (out / "summary.txt").read_text().splitlines()
    return {line.split()[0]: line for line in lines[1:-1] if line and not line.startswith(" ")}


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_help_and_bad_option():
    assert "GPU_CHECK_DEVICE=cpu" in subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True,
                                                    text=True, check=True).stdout
    bad = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --gpu" in bad.stderr


@pytest.mark.skipif(not perceptloss.backends.has_kernel("cpu"), reason="fused operator not built")
def test_operator_driver_passes_on_the_cpu_kernels(capsys):
    assert gpu_driver.main(["op", "--device", "cpu", "--dtypes", "float32,bfloat16"]) == 0
    text = capsys.readouterr().out
    assert "FAIL" not in text
    for case in ("more work items than", "different 16-byte alignment", "N=0", "30 layers", "channels_last"):
        assert case in text, case


@pytest.mark.skipif(not perceptloss.backends.has_kernel("cpu"), reason="fused operator not built")
def test_operator_driver_reports_a_wrong_result(monkeypatch, capsys):
    import torch

    real = torch.ops.perceptloss.feature_distance

    class Broken:
        def __call__(self, a, b, w, p=2):
            return real(a, b, w, p) * 1.01

    monkeypatch.setattr(torch.ops.perceptloss, "feature_distance", Broken())
    assert gpu_driver.main(["op", "--device", "cpu", "--dtypes", "float32"]) == 1
    assert "FAIL float32 p=2 VGG shapes N=4: AssertionError: torch.float32: forward rel. error 1.00e-02" in \
        capsys.readouterr().out


def test_synthetic_celeba_folder_loads(tmp_path):
    from dfcvae import celeba  # examples/dfcvae

    gpu_driver.write_celeba(tmp_path / "celeba", 16)
    data = celeba.load_celeba(tmp_path / "celeba", verbose=False)
    assert len(data.split("train")) == 12 and len(data.split("val")) + len(data.split("test")) == 4


@pytest.mark.slow
def test_cpu_mode_runs_the_phases_records_a_failure_and_writes_few_small_files(tmp_path):
    """One run of the CPU mode (each phase is a fresh Python process, so one run covers the script's logic): the
    driver phase fails (the operator switched off), the losses phase after it still runs, train fails on a missing
    --data with train.py's own message; the driver itself passing on the CPU kernels is the in-process test above."""
    out = tmp_path / "out"
    proc = run_check(out, "build,info,driver,tests,memcheck,losses,train", PERCEPTLOSS_DISABLE_EXT="1",
                     DATA=str(tmp_path / "no-celeba-here"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    got = summary_lines(out)
    assert got["info"].split()[1] == "ok" and got["losses"].split()[1] == "ok", got
    assert got["driver"].split()[1].startswith("FAIL") and got["train"].split()[1].startswith("FAIL"), got
    for skipped in ("build", "tests", "memcheck"):
        assert got[skipped].split()[1] == "SKIP", got[skipped]
    assert "racecheck" not in got  # not asked for
    assert "SOME PHASES FAILED" in (out / "summary.txt").read_text()
    files = {p.name for p in out.iterdir()}
    assert files <= OUT_FILES and len(files) <= 8
    assert all(p.stat().st_size < 1 << 20 for p in out.iterdir())
    assert "no cpu kernel in this build" in (out / "sanitizer.txt").read_text()
    assert "HAS_EXT False" in (out / "info.txt").read_text()
    assert "does not exist" in (out / "train.txt").read_text()  # train.py's own message about --data


def test_budget_exhausted_phases_are_skipped(tmp_path):
    out = tmp_path / "out"
    proc = run_check(out, "info,driver", GPU_CHECK_BUDGET="5")
    assert proc.returncode == 0
    got = summary_lines(out)
    assert "no time left" in got["info"] and "no time left" in got["driver"]
