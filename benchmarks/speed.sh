#!/usr/bin/env bash
# The speed table of issue 37 in one command, on a quiet machine (nothing else running): eager vs torch.compile
# with the compute fraction, evaluation throughput against the peers, the whole loss against the hand-written
# loss, the fused operator in bfloat16 against torch.compile; each natively and as an AVX2-only CPU (emulated).
# Result files go to benchmarks/results/ (cpu-<date>-<kind>-<section>.md); natively, compile.py and evaluation.py
# run again with --retain-freed-memory (as `perceptloss score` runs: <section>-retained.md). About 45 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv-test/bin/python}
avx2=(env ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2)
for run in native avx2; do
  pre=(); [ "$run" = avx2 ] && pre=("${avx2[@]}")
  "${pre[@]}" "$py" benchmarks/compile.py --repeats 9
  "${pre[@]}" "$py" benchmarks/evaluation.py
  "${pre[@]}" "$py" benchmarks/run.py --device cpu --only loss,operator --loss-cases N16-64px --cases N64-64px \
    --dtypes bfloat16,float32 --repeats 15
done
"$py" benchmarks/compile.py --repeats 9 --retain-freed-memory
"$py" benchmarks/evaluation.py --retain-freed-memory
