"""Build perceptloss: the pure-Python package, plus the fused operator from csrc/ when it can be compiled.

- The C++ CPU kernels are built whenever a C++ compiler works.
- The CUDA kernels are added when FORCE_CUDA=1, or when a GPU is visible and CUDA_HOME is set.
- If the build fails, a pure-PyTorch package is installed (perceptloss.HAS_EXT is False) unless
  PERCEPTLOSS_REQUIRE_EXT=1, in which case the build error is raised (CI sets it).
- The CPU kernels' inner loops (every source in csrc/ops/cpu/kernels/) are compiled once per CPU capability level,
  as ATen compiles its native/cpu kernels, with the levels and flags of csrc/ops/cpu/kernels/cpu_levels.txt
  (DEFAULT, AVX2 and AVX512 on x86-64; DEFAULT elsewhere); the library picks
  one at run time (csrc/ops/cpu/cpu_dispatch.cpp). PERCEPTLOSS_CPU_LEVELS=DEFAULT,AVX2 builds fewer.
Useful: MAX_JOBS (parallel compile jobs), TORCH_CUDA_ARCH_LIST (e.g. "9.0"), PERCEPTLOSS_NO_EXT=1 (skip).
"""
from __future__ import annotations

import glob
import os
import platform
import sys
from concurrent.futures import ThreadPoolExecutor

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


#: The per-ISA kernel sources: every .cpp in this folder is compiled once per CPU level (as ATen's native/cpu).
CPU_KERNEL_DIR = "csrc/ops/cpu/kernels"
#: The one table of levels and their compiler flags, read here and by CMakeLists.txt.
CPU_LEVELS_TABLE = os.path.join(CPU_KERNEL_DIR, "cpu_levels.txt")


def read_cpu_levels_table(path: str = os.path.join(ROOT, CPU_LEVELS_TABLE)) -> dict[str, list[str]]:
    """{level: compiler flags} from the table, lowest level first ("NAME flag ..." per line, # comments)."""
    levels: dict[str, list[str]] = {}
    with open(path) as f:
        for line in f:
            words = line.split("#", 1)[0].split()
            if words:
                levels[words[0].upper()] = words[1:]
    if "DEFAULT" not in levels:
        raise SystemExit(f"{path}: the table must have a DEFAULT level")
    return levels


def cpu_levels() -> dict[str, list[str]]:
    """The levels to compile the CPU kernels for: every level of the table on x86-64 with GCC/Clang, else DEFAULT."""
    x86 = platform.machine().lower() in ("x86_64", "amd64") and sys.platform != "win32"
    levels = read_cpu_levels_table() if x86 else {"DEFAULT": []}
    wanted = os.environ.get("PERCEPTLOSS_CPU_LEVELS")
    if wanted:
        names = [w.strip().upper() for w in wanted.split(",") if w.strip()]
        unknown = [w for w in names if w not in levels]
        if unknown or "DEFAULT" not in names:
            raise SystemExit(f"PERCEPTLOSS_CPU_LEVELS={wanted!r}: choose among {', '.join(levels)}, DEFAULT included")
        levels = {k: v for k, v in levels.items() if k in names}
    return levels


def warn_no_extension(reason: str) -> None:
    """A banner on stderr: the fused operator is not built, why, and how to get it (pip shows it with -v)."""
    line = "=" * 78
    print(f"""
{line}
perceptloss: the fused C++ operator is NOT being built: {reason}
The package still works, on the slower pure-PyTorch path (perceptloss.HAS_EXT is False; importing perceptloss
warns once, silenced by PERCEPTLOSS_NO_EXT_WARNING=1). To build the operator, install torch and a C++ compiler
first, then reinstall with the build error shown:
    PERCEPTLOSS_REQUIRE_EXT=1 python -m pip install -v --no-build-isolation .
{line}
""", file=sys.stderr, flush=True)


def extension_modules():
    if _flag("PERCEPTLOSS_NO_EXT"):
        print("perceptloss: PERCEPTLOSS_NO_EXT=1: building the pure-PyTorch package only (importing it warns once; "
              "PERCEPTLOSS_NO_EXT_WARNING=1 silences that)", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as e:
        if _flag("PERCEPTLOSS_REQUIRE_EXT"):
            raise
        warn_no_extension(f"torch is not importable at build time ({e})")
        return [], {}
    level_sources = sorted(glob.glob(os.path.join(CPU_KERNEL_DIR, "*.cpp")))  # compiled once per CPU level
    sources = sorted(glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/ops/cpu/*.cpp")) + ["csrc/module.cpp"]
    levels = cpu_levels()
    cuda_sources = sorted(glob.glob("csrc/ops/cuda/*.cu"))
    use_cuda = _flag("FORCE_CUDA") or (torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None)
    # The C++ standard is chosen by torch.utils.cpp_extension to match the headers. -g0: Python's own CFLAGS carry -g,
    # which doubles the compile time and the size of the library for debug information a release build does not need.
    cxx = ["-O3", "-g0"]
    # at::parallel_for runs serially unless the translation unit that instantiates it is compiled with OpenMP
    # (torch's CPU builds use OpenMP; the extension then shares torch's libgomp, same soname).
    openmp = ["/openmp"] if sys.platform == "win32" else ["-fopenmp"]
    link = [] if sys.platform == "win32" else ["-fopenmp"]
    cxx += openmp
    macros = [(f"PERCEPTLOSS_HAVE_{level}_KERNELS", None) for level in levels if level != "DEFAULT"]
    if use_cuda:
        extra = [f for d in _missing_cuda_header_dirs(cpp_extension.CUDA_HOME) for f in ("-isystem", d)]
        ext = cpp_extension.CUDAExtension(
            "perceptloss._C",
            sources + cuda_sources,
            extra_compile_args={"cxx": cxx + extra, "nvcc": ["-O3", "-lineinfo"] + extra},
            define_macros=macros + [("PERCEPTLOSS_WITH_CUDA", None)],
            extra_link_args=link,
        )
    else:
        ext = cpp_extension.CppExtension("perceptloss._C", sources, extra_compile_args={"cxx": cxx},
                                         define_macros=macros, extra_link_args=link)
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=_flag("USE_NINJA") or _has_ninja())

    class OptionalBuildExt(build_ext):
        """Fall back to the pure-PyTorch package if compiling fails, unless PERCEPTLOSS_REQUIRE_EXT=1.

        Compiles the per-level CPU kernel sources first (one object folder per level, that level's flags and
        CPU_CAPABILITY macros) and links them after the other objects, DEFAULT first, so that where the linker
        merges an inline function emitted by several levels it keeps the one every CPU can run.
        """

        def build_extension(self, ext):
            def compile_level(level: str, flags: list[str]) -> list[str]:
                postargs = dict(ext.extra_compile_args)
                postargs["cxx"] = list(postargs["cxx"]) + flags
                return self.compiler.compile(
                    level_sources,
                    output_dir=os.path.join(self.build_temp, "cpu_level_" + level.lower()),
                    macros=list(ext.define_macros) + [("CPU_CAPABILITY", level), (f"CPU_CAPABILITY_{level}", None)],
                    include_dirs=list(ext.include_dirs),
                    debug=self.debug,
                    extra_postargs=postargs,
                    depends=ext.depends,
                )

            # The levels are independent compiles (each its own object folder): MAX_JOBS of them at a time.
            jobs = max(1, int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1))
            with ThreadPoolExecutor(max_workers=min(jobs, len(levels))) as pool:
                per_level = list(pool.map(compile_level, levels.keys(), levels.values()))
            objects = [o for level_objects in per_level for o in level_objects]  # DEFAULT's first
            ext.extra_objects = list(ext.extra_objects or []) + objects
            super().build_extension(ext)

        def run(self):
            try:
                super().run()
            except Exception as e:  # noqa: BLE001 - any compiler failure
                if _flag("PERCEPTLOSS_REQUIRE_EXT"):
                    raise
                warn_no_extension(f"compiling it failed ({type(e).__name__}: {e})")

    return [ext], {"build_ext": OptionalBuildExt}


def _missing_cuda_header_dirs(cuda_home: str | None) -> list[str]:
    """Header folders of pip's nvidia-* wheels, for toolkits that ship nvcc without the math libraries' headers.

    torch's CUDA headers include cusparse.h / cublas_v2.h; a minimal toolkit (nvcc + cudart only) lacks them,
    while the nvidia wheels torch depends on carry them. They are added with -isystem, so the toolkit's own
    headers still win.
    """
    if cuda_home and os.path.isfile(os.path.join(cuda_home, "include", "cusparse.h")):
        return []
    try:
        import nvidia  # namespace package of the nvidia-* wheels
    except ImportError:
        return []
    found = []
    for root in list(nvidia.__path__):
        for inc in sorted(glob.glob(os.path.join(root, "*", "include"))):
            if glob.glob(os.path.join(inc, "cusparse*.h")) or glob.glob(os.path.join(inc, "cublas*.h")):
                found.append(inc)
    return found


def _has_ninja() -> bool:
    try:
        from torch.utils.cpp_extension import is_ninja_available

        return is_ninja_available()
    except Exception:
        return False


ext_modules, cmdclass = extension_modules()
setup(packages=find_packages(include=["perceptloss", "perceptloss.*"]), ext_modules=ext_modules, cmdclass=cmdclass)
