#!/usr/bin/env bash
# Django's own test suite as a gate: tests/djangosuite/run.py (stock run, cached, then an autopool
# run; fails on any test that passes stock but not pooled, or if pooling did not happen).
# Bootstraps nothing: run scripts/bootstrap.sh first on a fresh machine. Arguments go to run.py,
# e.g. `scripts/djangosuite.sh --driver pymysql` or `scripts/djangosuite.sh --labels all`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
exec "$py" -m tests.djangosuite.run "$@"
