#!/usr/bin/env bash
# Build the sdist and wheel, check them with twine, install the wheel into a fresh virtualenv
# outside the source tree, and run the core integration tests against the installed package.
# Then every pip line of README.rst and docs/install.rst, as written (the wheel standing in for
# the distribution name), each in its own fresh virtualenv with a smoke test (tests/install_lines.py).
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
whl=$(ls "$WORK"/dist/django_mysql_autopool-*.whl)  # fails here if the wheel has another name
"$WORK/venv/bin/python" -m pip install -q "$whl[test]" >/dev/null
# The tests, but not the package, are copied: autopool must come from site-packages.
mkdir -p "$WORK/run"
cp -r tests "$WORK/run/tests"
cd "$WORK/run"
"$WORK/venv/bin/python" - <<'PY'
import autopool, os, sys
from importlib import metadata
assert "site-packages" in autopool.__file__, autopool.__file__
# The distribution name pip resolves to this project (PyPI's "autopool" is another project).
dist = metadata.distribution("django-mysql-autopool")
assert dist.version == autopool.__version__, (dist.version, autopool.__version__)
assert "autopool/__init__.py" in {str(f) for f in dist.files}, "the wheel does not hold the autopool package"
assert os.path.exists(os.path.join(os.path.dirname(autopool.__file__), "py.typed"))
print("package: django-mysql-autopool", autopool.__version__, "from", os.path.dirname(autopool.__file__))
PY
"$WORK/venv/bin/python" -m pytest tests/test_core.py tests/test_config.py tests/test_overhead.py -q -p no:cacheprovider
echo "package: the documented install lines, each in a fresh virtualenv"
cd "$ROOT"
$PY -m tests.install_lines "$whl" "$WORK"
