#!/usr/bin/env bash
# The README's demo, on a fresh Debian/Ubuntu machine as root (or with sudo):
#
#     bash scripts/demo.sh
#
# 1. scripts/bootstrap.sh installs MariaDB, the MySQL client headers, wrk and a .venv with
#    Django, SQLAlchemy, mysqlclient, PyMySQL, gevent and gunicorn (skipped when already done);
# 2. python -m bench.run --demo starts a throw-away MariaDB, serves example_project with gunicorn's
#    gevent worker, puts stock Django (a new connection per request) and autopool side by side
#    under a short wrk load, prints requests/s, p99 latency, peak server connections and server
#    commands per request, and stops everything it started, also on Ctrl-C or an error.
#
# Extra arguments go to bench/run.py, e.g. `bash scripts/demo.sh --duration 10`.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s)
bash scripts/bootstrap.sh
echo "demo: setup took $(( $(date +%s) - start )) s"

if ! command -v wrk >/dev/null; then
    echo "demo: wrk is not installed and could not be installed (apt-get install wrk)" >&2
    exit 2
fi
# An exported AUTOPOOL_TEST_MYSQL_HOST would make the demo use that server instead of its own.
unset AUTOPOOL_TEST_MYSQL_HOST AUTOPOOL_TEST_MYSQL_PORT AUTOPOOL_TEST_MYSQL_USER AUTOPOOL_TEST_MYSQL_PASSWORD
demo_start=$(date +%s)
status=0
.venv/bin/python -m bench.run --demo "$@" || status=$?
echo "demo: finished in $(( $(date +%s) - demo_start )) s (total $(( $(date +%s) - start )) s)"
exit $status
