"""Nothing silent in a newcomer's first hour: the app installs autopool, and misconfigurations warn.

Each case runs a fresh process of a throw-away project whose entry points never call
``autopool.install()`` (``wsgi.py``, ``asgi.py``, a worker script that calls
``django.setup()`` as Celery's Django fix-up does, ``manage.py``), against the test
server. Whether a process is pooled is read on the server: ``CONNECTION_ID()`` stays the
same from one request to the next only when the connection came back from a pool.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.mariadb import Server

# Every case runs in processes of its own, the same whether pytest is gevent-patched or not: the
# plain runs of scripts/test.sh cover them.
pytestmark = pytest.mark.gevent_subprocess

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "autopool_advice"

SETTINGS_PY = '''\
import json
import os

if os.environ.get("AUTOPOOL_TEST_DRIVER") == "pymysql":  # where the docs put it: top of settings.py
    import pymysql

    pymysql.install_as_MySQLdb()

SECRET_KEY = "advice"
INSTALLED_APPS = ["autopool"]
ROOT_URLCONF = "advproj.urls"
ALLOWED_HOSTS = ["*"]
USE_TZ = True
DATABASES = json.loads(os.environ["ADV_DATABASES"])
globals().update(json.loads(os.environ.get("ADV_SETTINGS", "{}")))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "LOG %(levelname)s %(name)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"autopool": {"handlers": ["stderr"], "level": os.environ.get("ADV_LOG_LEVEL", "WARNING"),
                             "propagate": False}},
}
'''

URLS_PY = '''\
import json

from django.db import connection
from django.http import HttpResponse
from django.urls import path

import autopool


def query(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        (cid,) = cursor.fetchone()
    return HttpResponse(json.dumps({"cid": cid, "installed": autopool.is_installed(),
                                    "pools": [s["alias"] for s in autopool.stats()]}))


urlpatterns = [path("q", query)]
'''

# The stock files `django-admin startproject` writes, without a word about autopool.
WSGI_PY = '''\
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "advproj.settings")
application = get_wsgi_application()
'''

ASGI_PY = '''\
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "advproj.settings")
application = get_asgi_application()
'''

MANAGE_PY = '''\
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "advproj.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
'''

# Serves REQUESTS requests through one entry point, as its server would, and prints one JSON line.
DRIVE_PY = '''\
import asyncio
import io
import json
import sys
import threading

kind, requests = sys.argv[1], int(sys.argv[2])
results = []


def wsgi():
    from advproj.wsgi import application

    for _ in range(requests):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/q", "SERVER_NAME": "testserver", "SERVER_PORT": "80",
                   "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http", "QUERY_STRING": ""}
        response = application(environ, lambda status, headers: None)
        body = b"".join(response)
        response.close()  # what the server does: Django's request_finished, connection.close()
        results.append(json.loads(body))


def asgi():
    from advproj.asgi import application

    async def one():
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": "/q", "raw_path": b"/q", "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
        sent, body = [], []

        async def receive():
            if not sent:
                sent.append(True)
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # no disconnect: Django cancels this once it has answered

        async def send(message):
            if message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        await application(scope, receive, send)
        return json.loads(b"".join(body))

    for _ in range(requests):
        results.append(asyncio.run(one()))


def worker():
    # A worker process (Celery's Django fix-up calls django.setup() in each one); each task on a
    # thread of its own, closing its connection at the end as the fix-up does.
    import django

    django.setup()
    from django.db import connection

    import autopool

    def task():
        with connection.cursor() as cursor:
            cursor.execute("SELECT CONNECTION_ID()")
            results.append({"cid": cursor.fetchone()[0], "installed": autopool.is_installed(),
                            "pools": [s["alias"] for s in autopool.stats()]})
        connection.close()

    for _ in range(requests):
        thread = threading.Thread(target=task)
        thread.start()
        thread.join()


def leak():
    # A thread that ends without closing its connection (CONN_MAX_AGE keeps it): the pool reclaims it.
    import time

    import django

    django.setup()
    from django.db import connection

    import autopool

    def task():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    thread = threading.Thread(target=task)
    thread.start()
    thread.join()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not autopool.stats("default")[0]["leaks"]:
        time.sleep(0.05)
    results.append({"leaks": autopool.stats("default")[0]["leaks"]})


{"wsgi": wsgi, "asgi": asgi, "worker": worker, "leak": leak}[kind]()
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mariadb: Server) -> Path:
    mariadb.execute(f"CREATE DATABASE IF NOT EXISTS {DB_NAME}")
    root = tmp_path_factory.mktemp("advproject")
    (root / "advproj").mkdir()
    for name, text in {"manage.py": MANAGE_PY, "drive.py": DRIVE_PY, "advproj/__init__.py": "",
                       "advproj/settings.py": SETTINGS_PY, "advproj/urls.py": URLS_PY,
                       "advproj/wsgi.py": WSGI_PY, "advproj/asgi.py": ASGI_PY}.items():
        (root / name).write_text(text)
    yield root
    mariadb.execute(f"DROP DATABASE IF EXISTS {DB_NAME}")


def database(server: Server, **extra: Any) -> dict[str, Any]:
    db = {"ENGINE": "django.db.backends.mysql", "NAME": DB_NAME, "HOST": server.host, "PORT": str(server.port),
          "USER": server.user, "PASSWORD": server.password}
    db.update(extra)
    return db


def run(project: Path, args: list[str], databases: dict[str, Any], settings: dict[str, Any] | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("AUTOPOOL_ENABLED", "DJANGO_SETTINGS_MODULE")}
    environ.update(PYTHONPATH=os.pathsep.join([str(project), str(ROOT)]), PYTHONDONTWRITEBYTECODE="1",
                   ADV_DATABASES=json.dumps(databases), ADV_SETTINGS=json.dumps(settings or {}),
                   DJANGO_SETTINGS_MODULE="advproj.settings", **(env or {}))
    proc = subprocess.run([sys.executable, *args], cwd=project, env=environ, text=True, capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def serve(project: Path, kind: str, databases: dict[str, Any], requests: int = 4,
          **kw: Any) -> tuple[list[dict[str, Any]], str]:
    proc = run(project, ["drive.py", kind, str(requests)], databases, **kw)
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def logged(stderr: str, check_id: str) -> list[str]:
    """The ``autopool`` logger's WARNING records for ``check_id``."""
    return [line for line in stderr.splitlines() if line.startswith(f"LOG WARNING autopool {check_id}: ")]


def assert_pooled(results: list[dict[str, Any]]) -> None:
    assert all(r["installed"] and r["pools"] == ["default"] for r in results), results
    assert len({r["cid"] for r in results}) == 1, results  # one server session served every request


ENTRY_POINTS = ["wsgi", "asgi", "worker"]


@pytest.mark.parametrize("kind", ENTRY_POINTS)
def test_the_app_alone_pools_every_entry_point(project: Path, mariadb: Server, kind: str) -> None:
    opened = mariadb.status("Connections")
    results, stderr = serve(project, kind, {"default": database(mariadb, POOL={"pool_size": 2})}, requests=6)
    assert_pooled(results)
    assert mariadb.status("Connections") - opened <= 2  # the pooled connection (+ the status query)
    assert "autopool." not in stderr and "AutopoolWarning" not in stderr, stderr


def test_the_app_alone_pools_management_commands(project: Path, mariadb: Server) -> None:
    code = ("import json, autopool\nfrom django.db import connection\ncids = []\nfor _ in range(3):\n"
            "    with connection.cursor() as c:\n        c.execute('SELECT CONNECTION_ID()')\n"
            "        cids.append(c.fetchone()[0])\n    connection.close()\n"
            "print(json.dumps([autopool.is_installed(), cids]))")
    proc = run(project, ["manage.py", "shell", "-c", code], {"default": database(mariadb, POOL={})})
    installed, cids = json.loads(proc.stdout.strip().splitlines()[-1])
    assert installed and len(set(cids)) == 1, proc.stdout


@pytest.mark.parametrize("kind", ENTRY_POINTS)
def test_pool_without_install_warns_once_at_the_first_connection(project: Path, mariadb: Server, kind: str) -> None:
    results, stderr = serve(project, kind, {"default": database(mariadb, POOL={})},
                            settings={"AUTOPOOL_AUTO_INSTALL": False})
    assert not any(r["installed"] for r in results) and len({r["cid"] for r in results}) == len(results)
    [line] = logged(stderr, "autopool.W001")  # four requests, one warning
    assert ("DATABASES['default'] has a POOL setting, but autopool.install() was not called in this process"
            in line)
    assert "drive.py" in line and "AUTOPOOL_AUTO_INSTALL = False" in line and "wsgi.py" in line
    assert "AutopoolWarning: autopool.W001" in stderr


def test_install_after_setup_is_not_reported(project: Path, mariadb: Server) -> None:
    code = ("import autopool\nautopool.install()\nfrom django.db import connection\n"
            "connection.cursor().execute('SELECT 1')\nconnection.close()\nprint(autopool.stats()[0]['alias'])")
    proc = run(project, ["manage.py", "shell", "-c", code], {"default": database(mariadb, POOL={})},
               settings={"AUTOPOOL_AUTO_INSTALL": False})
    assert proc.stdout.strip().splitlines()[-1] == "default"
    assert "autopool.W001" not in proc.stderr


def test_conn_max_age_warns_at_start_up_in_every_process(project: Path, mariadb: Server) -> None:
    dbs = {"default": database(mariadb, POOL={}, CONN_MAX_AGE=60)}
    for kind in ENTRY_POINTS:
        _, stderr = serve(project, kind, dbs)
        [line] = logged(stderr, "autopool.W002")
        assert "DATABASES['default'] sets CONN_MAX_AGE=60 on a pooled alias" in line
        assert "HINT: Set CONN_MAX_AGE to 0" in line
    # manage.py check reports the same text under the same ID, once: not also as a runtime warning.
    check = run(project, ["manage.py", "check"], dbs)
    assert not logged(check.stderr, "autopool.W002") and "AutopoolWarning" not in check.stderr
    text = line.split("autopool.W002: ", 1)[1].split(" HINT: ")[0]
    assert f"DATABASES['default']: (autopool.W002) {text}" in check.stderr


def test_a_connection_left_open_by_conn_max_age_names_the_setting(project: Path, mariadb: Server) -> None:
    [result], stderr = serve(project, "leak", {"default": database(mariadb, POOL={}, CONN_MAX_AGE=60)})
    assert result["leaks"] == 1
    reclaimed = [line for line in stderr.splitlines() if "reclaimed a connection of 'default'" in line]
    assert reclaimed and "CONN_MAX_AGE=60" in reclaimed[0] and "set CONN_MAX_AGE to 0" in reclaimed[0]


def test_pool_options_left_from_django_db_connection_pool(project: Path, mariadb: Server) -> None:
    dbs = {"default": database(mariadb, POOL_OPTIONS={"POOL_SIZE": 10, "MAX_OVERFLOW": 10})}
    results, stderr = serve(project, "wsgi", dbs)
    assert not any(r["pools"] for r in results)  # not pooled: exactly what the warning says
    [line] = logged(stderr, "autopool.W004")
    assert ("DATABASES['default'] has POOL_OPTIONS, but its ENGINE is 'django.db.backends.mysql', not "
            "django-db-connection-pool's: nothing reads it, so this alias is not pooled." in line)
    assert "autopool.compat.from_dj_db_conn_pool(DATABASES)" in line
    check = run(project, ["manage.py", "check"], dbs)
    assert "DATABASES['default']: (autopool.W004) DATABASES['default'] has POOL_OPTIONS" in check.stderr

    # Still on django-db-connection-pool's ENGINE: its own setting, nothing to say.
    from autopool.advice import leftovers

    assert leftovers({"default": dict(dbs["default"], ENGINE="dj_db_conn_pool.backends.mysql")}) == []
    [both] = leftovers({"default": dict(dbs["default"], POOL={})})
    assert "POOL_OPTIONS is ignored and POOL is used" in both.msg


def test_a_bad_pool_warns_at_start_up(project: Path, mariadb: Server) -> None:
    proc = run(project, ["manage.py", "shell", "-c", "print('started')"],
               {"default": database(mariadb, POOL={"max_overflw": 3})})
    [line] = logged(proc.stderr, "autopool.E001")
    assert re.search(r"\['max_overflw'\]: unknown option \(did you mean 'max_overflow'\?\)", line)


def test_disabled_by_the_environment_says_so_quietly(project: Path, mariadb: Server) -> None:
    results, stderr = serve(project, "wsgi", {"default": database(mariadb, POOL={}, CONN_MAX_AGE=60)},
                            env={"AUTOPOOL_ENABLED": "0"})
    assert not any(r["pools"] for r in results)
    assert "WARNING" not in stderr and "AutopoolWarning" not in stderr, stderr


def test_persistent_unpooled_connections_under_asgi_warn_at_start_up(project: Path, mariadb: Server) -> None:
    results, stderr = serve(project, "asgi", {"default": database(mariadb, CONN_MAX_AGE=60)},
                            settings={"ASGI_APPLICATION": "advproj.asgi.application"})
    assert not any(r["pools"] for r in results)
    [line] = logged(stderr, "autopool.W020")
    assert "DATABASES['default'] sets CONN_MAX_AGE=60 without a POOL in an ASGI project" in line



def _gunicorn(project: Path, databases: dict[str, Any], settings: dict[str, Any] | None = None) -> Any:
    """``gunicorn -k gevent`` serving the stock wsgi.py; returns (process, port)."""
    from tests.mariadb import free_port

    pytest.importorskip("gunicorn")
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k not in ("AUTOPOOL_ENABLED", "DJANGO_SETTINGS_MODULE")}
    environ.update(PYTHONPATH=os.pathsep.join([str(project), str(ROOT)]), PYTHONDONTWRITEBYTECODE="1",
                   ADV_DATABASES=json.dumps(databases), ADV_SETTINGS=json.dumps(settings or {}),
                   DJANGO_SETTINGS_MODULE="advproj.settings")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--no-control-socket", "-k", "gevent", "-w", "1",
                             "--worker-connections", "200", "-b", f"127.0.0.1:{port}", "advproj.wsgi"],
                            cwd=project, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, port


def _get(port: int) -> dict[str, Any]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/q")
        response = conn.getresponse()
        assert response.status == 200, response.read()
        return json.loads(response.read())
    finally:
        conn.close()


def _load(port: int, clients: int, each: int) -> list[dict[str, Any]]:
    import threading
    import time

    deadline = time.monotonic() + 30
    while True:  # ready when it answers
        try:
            first = _get(port)
            break
        except OSError:
            assert time.monotonic() < deadline, "gunicorn did not become ready"
            time.sleep(0.05)
    results, errors = [first], []

    def client() -> None:
        try:
            for _ in range(each):
                results.append(_get(port))
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return results


def _stop(proc: Any) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=5)
    return out


def test_gunicorn_gevent_with_a_stock_wsgi_py_is_pooled(project: Path, mariadb: Server) -> None:
    """The issue's case: nothing in wsgi.py. Listing the app is enough for a gevent worker under load."""
    # No overflow: connections opened beyond pool_size close on return and reopen later, so only
    # without it does "at most pool_size server sessions, ever" hold (stock Django: one per request).
    opened = mariadb.status("Connections")
    proc, port = _gunicorn(project, {"default": database(mariadb, POOL={"pool_size": 5, "max_overflow": 0})})
    try:
        results = _load(port, clients=20, each=5)
    finally:
        output = _stop(proc)
    assert len(results) == 101 and all(r["installed"] and r["pools"] == ["default"] for r in results)
    assert len({r["cid"] for r in results}) <= 5, output
    assert mariadb.status("Connections") - opened <= 5 + 1, output  # (+ the status query itself)
    assert "autopool.W0" not in output, output


def test_gunicorn_gevent_with_install_turned_off_says_so_once(project: Path, mariadb: Server) -> None:
    proc, port = _gunicorn(project, {"default": database(mariadb, POOL={"pool_size": 3, "max_overflow": 2})},
                           settings={"AUTOPOOL_AUTO_INSTALL": False})
    try:
        results = _load(port, clients=10, each=3)
    finally:
        output = _stop(proc)
    assert not any(r["pools"] for r in results)
    assert len([line for line in output.splitlines() if line.startswith("LOG WARNING autopool autopool.W001: ")]) == 1
    assert "gunicorn" in output.split("autopool.W001: ", 1)[1].splitlines()[0]  # names the process
