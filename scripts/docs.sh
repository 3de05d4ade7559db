#!/usr/bin/env bash
# The docs command: make a virtualenv (.venv-docs) with the pinned docs tools (docs/requirements.txt) and build
# the site into site/ with `mkdocs build --strict`, so that any warning (a broken link, a docstring parameter that
# is not in the signature, ...) fails. The API reference is read from the sources without importing perceptloss,
# so this venv needs neither torch nor the compiled operator; formulas become MathML and the benchmarks page's
# tables are generated from benchmarks/results/ during the build. The command-line page (docs/cli.md) needs the
# parsers, hence torch: regenerate it with `.venv-test/bin/python docs/tools/cli_page.py` after changing the
# command line (a test fails until then). Extra arguments go to mkdocs build.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv-docs}
py=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip --disable-pip-version-check -q install -r docs/requirements.txt 2>&1 | { grep -v "is ignored" || true; }
NO_MKDOCS_2_WARNING=1 "$venv/bin/python" -m mkdocs build --strict --site-dir site "$@"
echo "docs built: site/index.html"
