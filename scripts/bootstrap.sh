#!/usr/bin/env bash
# Idempotent setup of a fresh Debian/Ubuntu machine for autopool's tests: system packages (as
# root), then a virtualenv at .venv with the test dependencies. Reruns skip what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "bootstrap: $*"; }
export DEBIAN_FRONTEND=noninteractive PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

SUDO=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then SUDO=(sudo -n); fi
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

apt_updated=
apt_install() {
    if [ -z "$apt_updated" ]; then
        log "apt-get update"
        "${SUDO[@]}" apt-get update -qq </dev/null >/dev/null
        apt_updated=1
    fi
    log "apt-get install $*"
    "${SUDO[@]}" apt-get install -y -qq "$@" </dev/null >/dev/null
}

if command -v apt-get >/dev/null; then
    missing=()
    # redis-server: the broker of the Celery tests; libpcre2-dev, zlib1g-dev: uWSGI's build (pip install
    # uwsgi compiles it) uses them for routing and compression when present.
    for pkg in mariadb-server default-libmysqlclient-dev pkg-config build-essential python3-venv python3-dev \
               redis-server libpcre2-dev zlib1g-dev; do
        installed "$pkg" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
    # wrk (HTTP load tests) is not packaged everywhere: its absence must not stop the setup.
    if ! command -v wrk >/dev/null; then apt_install wrk || log "wrk unavailable, skipped"; fi
else
    log "no apt-get: assuming MariaDB, the MySQL client headers, pkg-config and a compiler are present"
fi

if ! .venv/bin/python -c 'import sys' 2>/dev/null; then
    log "creating .venv"
    rm -rf .venv
    if ! python3 -m venv .venv; then
        # Debian's python3 cannot make venvs without python3-venv (and python3.X-venv).
        rm -rf .venv
        py=$(/usr/bin/python3 -c 'import sys; print("python%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
        apt_install python3-venv ${py:+"$py-venv"}
        { python3 -m venv .venv || { rm -rf .venv; /usr/bin/python3 -m venv .venv; }; }
    fi
fi

stamp=.venv/.autopool-bootstrap
inputs=()
for f in requirements-test.txt setup.py setup.cfg pyproject.toml; do [ -f "$f" ] && inputs+=("$f"); done
want=$( { .venv/bin/python -VV; cat "${inputs[@]}"; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    log ".venv up to date"
    exit 0
fi

rm -f "$stamp"
log "pip install -r requirements-test.txt"
.venv/bin/python -m pip install -q -r requirements-test.txt
if [ -f setup.py ] || [ -f pyproject.toml ]; then
    log "pip install -e .[test,gevent,pymysql]"
    if ! .venv/bin/python -m pip install -q -e '.[test,gevent,pymysql]'; then
        # Tests still import autopool from the repository root; do not stamp so the next run retries.
        log "WARNING: editable install of autopool failed; testing the source tree as is"
        exit 0
    fi
fi
echo "$want" >"$stamp"
log "done"
