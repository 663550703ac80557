#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh), start one throw-away MariaDB, and run the test suite on both
# drivers, with and without gevent monkey patching. Extra arguments go to every pytest run.
# Pytest's exit code 5 (no tests collected) counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh
PY=.venv/bin/python

if [ -z "${AUTOPOOL_TEST_MYSQL_HOST:-}" ]; then
    eval "$($PY -m tests.mariadb start --load-tz)"
    trap '$PY -m tests.mariadb stop >/dev/null 2>&1 || true' EXIT
fi

failed=()
run() {
    local name=$1; shift
    echo "== tests: $name"
    local rc=0
    "$@" || rc=$?
    if [ "$rc" = 5 ]; then echo "test.sh: pytest collected no tests ($name)" >&2; rc=1; fi
    [ "$rc" = 0 ] || failed+=("$name")
}

# The Galera cluster tests run once, below; in the four runs they are skipped.
GALERA=${AUTOPOOL_TEST_GALERA:-1}
unset AUTOPOOL_TEST_GALERA
PYTEST=(-m pytest tests -q -p no:cacheprovider "$@")
# The soak (tests/soak.py) runs 2 minutes in CI on mysqlclient, 20 s otherwise.
SOAK=${AUTOPOOL_SOAK_SECONDS:-$([ -n "${CI:-}" ] && echo 120 || echo 20)}
run "mysqlclient" env AUTOPOOL_TEST_DRIVER=mysqlclient AUTOPOOL_SOAK_SECONDS="$SOAK" "$PY" "${PYTEST[@]}"
run "pymysql" env AUTOPOOL_TEST_DRIVER=pymysql "$PY" "${PYTEST[@]}"
run "mysqlclient+gevent" env AUTOPOOL_TEST_DRIVER=mysqlclient "$PY" -m gevent.monkey --module "${PYTEST[@]:1}"
run "pymysql+gevent" env AUTOPOOL_TEST_DRIVER=pymysql "$PY" -m gevent.monkey --module "${PYTEST[@]:1}"
# A real 3-node Galera cluster and failover under gevent load (tests/test_galera.py, ~35 s). Its
# load already runs in a gevent-patched subprocess, so one run covers it. AUTOPOOL_TEST_GALERA=0 skips.
if [ "$GALERA" != 0 ]; then
    run "galera" env AUTOPOOL_TEST_GALERA=1 AUTOPOOL_TEST_DRIVER=mysqlclient "$PY" -m pytest tests/test_galera.py \
        -q -p no:cacheprovider "$@"
fi

# Django's own test suite for the database layer, stock and then with autopool installed
# (tests/djangosuite/run.py; ~5 min). AUTOPOOL_TEST_DJANGOSUITE=0 skips it.
if [ "${AUTOPOOL_TEST_DJANGOSUITE:-1}" != 0 ]; then
    run "djangosuite" "$PY" -m tests.djangosuite.run --driver mysqlclient
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

if [ ${#failed[@]} -gt 0 ]; then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test.sh: all test runs passed"
