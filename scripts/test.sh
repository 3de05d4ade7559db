#!/usr/bin/env bash
# The test command: make a virtualenv (.venv-test), install everything, compile the operator (CUDA too when
# nvcc exists) and run pytest, one worker per core. Extra arguments go to pytest. Exit code 5 (no tests collected) is a failure.
# TEST_TIER=quick (the default, what CI runs) skips the tests marked slow: those that start processes (subprocesses,
# torchrun, spawned ranks, the GPU-check script), compile a network with inductor, or run a whole program of the
# example (report, gallery, the real CelebA subset); TEST_TIER=all runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv-test}
case ${TEST_TIER:-quick} in
  quick) tier=(-m "not slow") ;;
  all) tier=() ;;
  *) echo "TEST_TIER must be quick (the default: no test marked slow) or all, got '$TEST_TIER'" >&2; exit 2 ;;
esac
bash scripts/setup_venv.sh "$venv" pytest pytest-xdist timm pillow lpips torchmetrics
# Wheels read for a data file only (their pinned dependencies, an old torch, must not be installed).
"$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps dists-pytorch==0.1 2>&1 | { grep -v "is ignored" || true; }
# ST-LPIPS' trained trunks and heads, and its code as the parity tests' oracle (its stray IPython and
# torchsummary imports are stubbed by tests/test_stlpips.py, so neither is installed).
"$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps stlpips-pytorch==0.0.2 2>&1 | { grep -v "is ignored" || true; }
# Test oracles only (parity tests import them; the library never does).
"$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps fdl-pytorch==1.0 2>&1 | { grep -v "is ignored" || true; }
# The DFC-VAE example's extra dependencies, all in one place: examples/dfcvae/requirements*.txt.
example=examples/dfcvae
"$venv/bin/python" -m pip --disable-pip-version-check -q install -r "$example/requirements.txt" 2>&1 | { grep -v "is ignored" || true; }
"$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps -r "$example/requirements-nodeps.txt" 2>&1 | { grep -v "is ignored" || true; }
# One pytest-xdist worker per core (PYTEST_WORKERS=1 for a single process); conftest splits the cores' threads.
workers=${PYTEST_WORKERS:-$(nproc)}
parallel=()
if [ "$workers" -gt 1 ]; then parallel=(-n "$workers"); fi
set +e
"$venv/bin/python" -m pytest -p no:cacheprovider -q "${parallel[@]}" "${tier[@]}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating this as a failure" >&2
  exit 1
fi
exit "$rc"
