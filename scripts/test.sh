#!/usr/bin/env bash
# The test command: make a virtualenv (.venv-test), install everything, compile the operator (CUDA too when
# nvcc exists) and run pytest. Extra arguments go to pytest. Exit code 5 (no tests collected) is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv-test}
bash scripts/setup_venv.sh "$venv" pytest timm pillow tqdm matplotlib scikit-learn scipy lpips
# The report's second face feature space (MTCNN's ONet) reads a data file of this wheel; its pinned
# dependencies (old torch) must not be installed.
"$venv/bin/python" -m pip --disable-pip-version-check -q install --no-deps facenet-pytorch==2.6.0 dists-pytorch==0.1 2>&1 | { grep -v "is ignored" || true; }
set +e
"$venv/bin/python" -m pytest -p no:cacheprovider -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating this as a failure" >&2
  exit 1
fi
exit "$rc"
