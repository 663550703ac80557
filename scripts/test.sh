#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh), start one throw-away MariaDB, and run the test suite on both
# drivers, with and without gevent monkey patching. Extra arguments go to every pytest run.
# Pytest's exit code 5 (no tests collected) counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh
PY=.venv/bin/python

LOGS=$(mktemp -d)
if [ -z "${AUTOPOOL_TEST_MYSQL_HOST:-}" ]; then
    # Also exports AUTOPOOL_TEST_MYSQL_PID/_DIR: the tests know this server was started for them
    # (time zone tables loaded, private servers allowed), not a server of someone else's.
    eval "$($PY -m tests.mariadb start --load-tz)"
    trap '$PY -m tests.mariadb stop >/dev/null 2>&1 || true; rm -rf "$LOGS"' EXIT
else
    trap 'rm -rf "$LOGS"' EXIT
fi

failed=()
runs=()
run() {
    local name=$1; shift
    echo "== tests: $name"
    local rc=0
    "$@" 2>&1 | tee "$LOGS/$name.log" || rc=$?
    if [ "$rc" = 5 ]; then echo "test.sh: pytest collected no tests ($name)" >&2; rc=1; fi
    [ "$rc" = 0 ] || failed+=("$name")
    runs+=("$name")
}

# Every skipped test of every run, with its reason (pytest -rs): a skip is for something this
# machine lacks or a driver a test is not about, never a test that silently stopped running.
skip_list() {
    echo "== skipped tests"
    local name n=0
    for name in "${runs[@]}"; do
        grep -E '^SKIPPED ' "$LOGS/$name.log" | sed "s/^/[$name] /" || true
    done
    n=$(cat "$LOGS"/*.log 2>/dev/null | grep -cE '^SKIPPED ' || true)
    echo "test.sh: $n skip line(s) in ${#runs[@]} run(s)"
}

# Lint, formatting, types and the import layers (settings in pyproject.toml): a failure fails the run.
run "lint" bash -c ".venv/bin/ruff check autopool tests bench && .venv/bin/ruff format --check autopool \
    && .venv/bin/mypy && .venv/bin/lint-imports --no-cache"

GALERA=${AUTOPOOL_TEST_GALERA:-1}
unset AUTOPOOL_TEST_GALERA
# tests/test_galera.py runs once, below (AUTOPOOL_TEST_GALERA=1), not in these four runs.
PYTEST=(-m pytest tests -q -p no:cacheprovider -rfEs --ignore=tests/test_galera.py "$@")
# Tests marked gevent_subprocess run a fresh monkey-patched subprocess: the same run whether pytest
# itself is patched or not, so the gevent runs deselect them (they run in both plain runs).
NOT_SUBPROCESS=(-m "not gevent_subprocess")
# The soak (tests/soak.py) runs 2 minutes in CI on mysqlclient, 20 s otherwise.
SOAK=${AUTOPOOL_SOAK_SECONDS:-$([ -n "${CI:-}" ] && echo 120 || echo 20)}
run "mysqlclient" env AUTOPOOL_TEST_DRIVER=mysqlclient AUTOPOOL_SOAK_SECONDS="$SOAK" "$PY" "${PYTEST[@]}"
run "pymysql" env AUTOPOOL_TEST_DRIVER=pymysql "$PY" "${PYTEST[@]}"
run "mysqlclient+gevent" env AUTOPOOL_TEST_DRIVER=mysqlclient "$PY" -m gevent.monkey --module "${PYTEST[@]:1}" \
    "${NOT_SUBPROCESS[@]}"
run "pymysql+gevent" env AUTOPOOL_TEST_DRIVER=pymysql "$PY" -m gevent.monkey --module "${PYTEST[@]:1}" \
    "${NOT_SUBPROCESS[@]}"
# A real 3-node Galera cluster and failover under gevent load (tests/test_galera.py, ~35 s). Its
# load already runs in a gevent-patched subprocess, so one run covers it. AUTOPOOL_TEST_GALERA=0 skips.
if [ "$GALERA" != 0 ]; then
    run "galera" env AUTOPOOL_TEST_GALERA=1 AUTOPOOL_TEST_DRIVER=mysqlclient "$PY" -m pytest tests/test_galera.py \
        -q -p no:cacheprovider -rfEs "$@"
fi

# Django's own test suite for the database layer, stock and then with autopool installed
# (tests/djangosuite/run.py; ~5 min, then ~2 min in transaction mode). AUTOPOOL_TEST_DJANGOSUITE=0 skips it.
if [ "${AUTOPOOL_TEST_DJANGOSUITE:-1}" != 0 ]; then
    run "djangosuite" "$PY" -m tests.djangosuite.run --driver mysqlclient
    # The same with POOL["pool_mode"] = "transaction" (the stock run's results are cached): the
    # tests listed in txmode_differences.txt are documented limitations of that mode.
    run "djangosuite-tx" "$PY" -m tests.djangosuite.run --driver mysqlclient \
        --pool '{"pool_size": 5, "max_overflow": 10, "pool_mode": "transaction"}' \
        --expected-differences tests/djangosuite/txmode_differences.txt
fi
# The wheel, installed outside the source tree, against the same server.
if [ "${AUTOPOOL_TEST_PACKAGE:-1}" != 0 ]; then
    run "package" bash scripts/package_check.sh
fi
# A spread of the compatibility matrix: the oldest and the newest of every axis together.
if [ "${AUTOPOOL_TEST_MATRIX:-1}" != 0 ]; then
    run "matrix" bash scripts/matrix.sh -e py310-dj42-sa20-mysqlclient-plain,py313-dj61-sa21-pymysql-gevent \
        -- tests/test_core.py tests/test_pool.py tests/test_config.py tests/test_overhead.py tests/test_gevent.py \
        tests/test_elastic.py tests/test_django_wrapper_semantics.py
fi

skip_list
if [ ${#failed[@]} -gt 0 ]; then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test.sh: all test runs passed"
