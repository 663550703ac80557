#!/usr/bin/env bash
# Build the sdist and wheel, check them with twine, install the wheel into a fresh virtualenv
# outside the source tree, and run the core integration tests against the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
$PY -m pip install -q build twine >/dev/null
WORK=$(mktemp -d /tmp/autopool-package-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
echo "package: building"
$PY -m build -q --outdir "$WORK/dist" . >/dev/null
$PY -m twine check --strict "$WORK"/dist/*
echo "package: installing the wheel into a fresh virtualenv"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$(ls "$WORK"/dist/*.whl)[test]" >/dev/null
# The tests, but not the package, are copied: autopool must come from site-packages.
mkdir -p "$WORK/run"
cp -r tests "$WORK/run/tests"
cd "$WORK/run"
"$WORK/venv/bin/python" - <<'PY'
import autopool, os, sys
assert "site-packages" in autopool.__file__, autopool.__file__
assert os.path.exists(os.path.join(os.path.dirname(autopool.__file__), "py.typed"))
print("package: autopool", autopool.__version__, "from", os.path.dirname(autopool.__file__))
PY
"$WORK/venv/bin/python" -m pytest tests/test_core.py tests/test_config.py tests/test_overhead.py -q -p no:cacheprovider
