#!/usr/bin/env bash
# Run tox environments (default: the whole matrix in tox.ini) against one shared throw-away
# MariaDB, with pyenv's interpreters on PATH. Usage: bash scripts/matrix.sh [-e ENV[,ENV...]]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh >/dev/null
PY=.venv/bin/python
for d in "$HOME"/.pyenv/versions/3.1[0-3]*/bin; do [ -d "$d" ] && PATH="$PATH:$d"; done
export PATH
.venv/bin/python -m pip install -q 'tox>=4' >/dev/null
if [ -z "${AUTOPOOL_TEST_MYSQL_HOST:-}" ]; then
    eval "$($PY -m tests.mariadb start --load-tz)"
    trap '$PY -m tests.mariadb stop >/dev/null 2>&1 || true' EXIT
fi
exec_rc=0
.venv/bin/tox -q "$@" || exec_rc=$?
exit "$exec_rc"
