"""Packaging carries the operator's sources, and a missing operator is loud (warning, info) unless opted out.

The sdist is built without compiling (PERCEPTLOSS_NO_EXT=1, a fraction of a second). The fallback is simulated
with PERCEPTLOSS_DISABLE_EXT=1, which makes perceptloss._ops skip loading _C (HAS_EXT is then False).
"""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tracked(folder: str) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", folder], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [line for line in out.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("sdist")
    env = dict(os.environ, PERCEPTLOSS_NO_EXT="1")
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(out), "sdist", "-d", str(out)],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )
    [archive] = out.glob("perceptloss-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    prefix = names[0].split("/")[0] + "/"
    return {n[len(prefix):] for n in names if n.startswith(prefix)}


def test_sdist_holds_every_tracked_source_file_under_csrc(sdist_names):
    tracked = _tracked("csrc")
    assert tracked, "git lists no file under csrc/"
    missing = [f for f in tracked if f not in sdist_names]
    assert not missing, f"the sdist lacks {missing}: add them to MANIFEST.in"


def test_sdist_holds_the_build_files_and_no_binaries(sdist_names):
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "CMakeLists.txt", "README.md"):
        assert name in sdist_names
    assert not [n for n in sdist_names if n.endswith((".so", ".o", ".pyc"))]


def test_license_is_an_spdx_expression():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'license = "MIT"' in text
    assert "setuptools>=77" in text  # the first setuptools that reads an SPDX license string


def _python(code: str, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("PERCEPTLOSS_NO_EXT_WARNING", "PERCEPTLOSS_NO_EXT")}
    full.update(env)
    return subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=300)


USE_TWICE = """
import torch, perceptloss, perceptloss._ops
from perceptloss import feature_distance
print("HAS_EXT", perceptloss.HAS_EXT)
a, b = [torch.rand(2, 3, 4, 4)], [torch.rand(2, 3, 4, 4)]
feature_distance(a, b, [1.0]); feature_distance(a, b, [1.0], fused=None)
"""


def test_missing_operator_warns_once_with_a_command_that_builds_it():
    r = _python(USE_TWICE, PERCEPTLOSS_DISABLE_EXT="1")
    assert r.returncode == 0, r.stderr
    assert "HAS_EXT False" in r.stdout
    assert r.stderr.count("FusedOperatorUnavailableWarning: ") == 1, r.stderr
    assert "pure-PyTorch path" in r.stderr and "PERCEPTLOSS_NO_EXT_WARNING=1" in r.stderr
    # the build command names this checkout, which has what an editable build needs
    cmd = f"cd {ROOT} && PERCEPTLOSS_REQUIRE_EXT=1 {sys.executable} -m pip install -v --no-build-isolation --no-deps -e ."
    assert cmd in r.stderr, r.stderr
    assert (ROOT / "setup.py").is_file() and (ROOT / "csrc").is_dir()


def test_warning_is_a_public_userwarning_subclass():
    import perceptloss

    assert issubclass(perceptloss.FusedOperatorUnavailableWarning, UserWarning)


@pytest.mark.slow
def test_opt_out_silences_the_warning():
    r = _python(USE_TWICE, PERCEPTLOSS_DISABLE_EXT="1", PERCEPTLOSS_NO_EXT_WARNING="1")
    assert r.returncode == 0, r.stderr
    assert "HAS_EXT False" in r.stdout
    assert "FusedOperatorUnavailableWarning" not in r.stderr


@pytest.mark.slow
def test_built_operator_does_not_warn():
    import perceptloss

    if not perceptloss.HAS_EXT:
        pytest.skip("fused operator not built")
    r = _python(USE_TWICE)
    assert r.returncode == 0 and "HAS_EXT True" in r.stdout
    assert "FusedOperatorUnavailableWarning" not in r.stderr


@pytest.mark.slow
def test_info_says_the_operator_is_missing_and_how_to_build_it():
    r = _python("from perceptloss.__main__ import main; main(['info'])", PERCEPTLOSS_DISABLE_EXT="1",
                PERCEPTLOSS_NO_EXT_WARNING="1")
    assert r.returncode == 0, r.stderr
    assert "fused operator: the fused operator is not built" in r.stdout
    assert "pure-PyTorch path" in r.stdout and "--no-build-isolation" in r.stdout


@pytest.mark.slow
def test_failed_compile_prints_a_banner(tmp_path):
    """setup.py's build output says why the operator is missing when the compiler fails (here: /bin/false)."""
    env = dict(os.environ, CC="/bin/false", CXX="/bin/false", USE_NINJA="0", PERCEPTLOSS_CPU_LEVELS="DEFAULT")
    for name in ("PERCEPTLOSS_REQUIRE_EXT", "PERCEPTLOSS_NO_EXT", "FORCE_CUDA"):
        env.pop(name, None)
    r = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-temp", str(tmp_path / "t"), "--build-lib", str(tmp_path / "l")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert "the fused C++ operator is NOT being built" in r.stderr, r.stderr[-2000:]
    assert "PERCEPTLOSS_REQUIRE_EXT=1 python -m pip install -v --no-build-isolation ." in r.stderr
    assert not list((tmp_path / "l").rglob("_C*.so"))


def test_one_table_of_cpu_levels_drives_both_builds():
    """setup.py and CMakeLists.txt read csrc/ops/cpu/kernels/cpu_levels.txt; the built levels come from it."""
    table = ROOT / "csrc" / "ops" / "cpu" / "kernels" / "cpu_levels.txt"
    levels = [line.split()[0] for line in table.read_text().splitlines() if line.split() and line[0] != "#"]
    assert levels[0] == "DEFAULT" and set(levels) == {"DEFAULT", "AVX2", "AVX512"}
    assert "csrc/ops/cpu/kernels/cpu_levels.txt" in (ROOT / "CMakeLists.txt").read_text().replace(
        "${PERCEPTLOSS_KERNEL_DIR}", "csrc/ops/cpu/kernels")
    assert '"csrc/ops/cpu/kernels"' in (ROOT / "setup.py").read_text()
    import perceptloss

    if perceptloss.backends.has_kernel("cpu"):
        assert set(perceptloss.backends.cpu.kernel_levels()) <= set(levels)


def test_device_neutral_layer_includes_no_backend_header():
    for name in ("feature_distance.cpp", "feature_distance.h", "feature_distance_utils.h"):
        text = (ROOT / "csrc" / "ops" / name).read_text()
        includes = [line for line in text.splitlines() if line.startswith("#include")]
        assert not [i for i in includes if "cpu/" in i or "cuda/" in i or "ATen/cuda" in i], (name, includes)
