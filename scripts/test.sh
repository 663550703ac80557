#!/usr/bin/env bash
# Set up (scripts/bootstrap.sh) and run the test suite; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh
rc=0
.venv/bin/python -m pytest tests -q -p no:cacheprovider "$@" || rc=$?
if [ "$rc" = 5 ]; then
    echo "test.sh: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
