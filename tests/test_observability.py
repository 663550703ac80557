"""Observability against the real MariaDB: ``autopool.stats()``, ``manage.py autopool`` and the logs.

Django is used two ways, both isolated from other test modules' settings:

* in process, through a private ``ConnectionHandler`` holding this module's own aliases
  (``obs_*``), so the main ``django.db.connections`` and its settings are never touched;
* in a subprocess running ``manage.py`` of a tiny throw-away project whose ``DATABASES`` come
  from the environment (``OBS_DATABASES``), for the command line and the system checks.
"""
from __future__ import annotations

import gc
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mariadb import Server
from tests.scenario_main import wait_until

ROOT = Path(__file__).resolve().parent.parent
DB_NAME = "autopool_obs"
WRONG_PASSWORD = "Wr0ng-obs-Pa55word"


# -- Django in process ---------------------------------------------------------------------------

def ensure_django() -> None:
    """Configure minimal settings unless the suite already did (then keep them)."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(DATABASES={}, INSTALLED_APPS=["autopool"], USE_TZ=True, TIME_ZONE="UTC",
                           SECRET_KEY="autopool-observability-tests")
    django.setup()


def db_settings(server: Server, name: str = DB_NAME, **extra: Any) -> dict[str, Any]:
    settings = {"ENGINE": "django.db.backends.mysql", "HOST": server.host, "PORT": str(server.port),
                "USER": server.user, "PASSWORD": server.password, "NAME": name}
    settings.update(extra)
    return settings


@pytest.fixture(scope="session")
def obs_server(mariadb: Server) -> Server:
    # IF NOT EXISTS: test_checks and test_prometheus import this fixture, so it may run once per module.
    mariadb.execute(f"CREATE DATABASE IF NOT EXISTS {DB_NAME} CHARACTER SET utf8mb4")
    return mariadb


class Pooled:
    """Private aliases, each a ``DATABASES`` entry, and fresh wrappers of them."""

    def __init__(self, databases: dict[str, dict[str, Any]]) -> None:
        from django.db.utils import ConnectionHandler

        self.aliases = list(databases)
        # Django insists on a 'default'; this one never connects.
        self.handler = ConnectionHandler({"default": {"ENGINE": "django.db.backends.dummy"}, **databases})
        self.wrappers: list[Any] = []

    def wrapper(self, alias: str) -> Any:
        """A new DatabaseWrapper of ``alias`` (as a new thread or greenlet would get)."""
        w = self.handler.create_connection(alias)
        self.wrappers.append(w)
        return w

    def pool(self, alias: str) -> Any:
        from autopool import registry

        return next(registry.entries(alias)).pool

    def close(self) -> None:
        import autopool

        for w in self.wrappers:
            try:
                if w.in_atomic_block:
                    w.needs_rollback = True
                w.close()
            except Exception:  # noqa: BLE001 - cleanup of a wrapper a test broke on purpose
                pass
        for alias in self.aliases:
            autopool.dispose(alias)


@pytest.fixture
def pooled(obs_server: Server) -> Iterator[Callable[..., Pooled]]:
    """``pooled({alias: POOL, ...}, **db_overrides)``: aliases pooled by an installed autopool."""
    ensure_django()
    import autopool

    was_installed = autopool.is_installed()
    autopool.install()
    made: list[Pooled] = []

    def make(pools: dict[str, Any], name: str = DB_NAME, **overrides: Any) -> Pooled:
        p = Pooled({alias: db_settings(obs_server, name, POOL=pool, **overrides) for alias, pool in pools.items()})
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()
    if not was_installed:
        autopool.uninstall()


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    """The predicate's first true value within ``timeout`` s, or its last false one (the caller asserts)."""
    return wait_until(predicate, timeout, fail=False)


def sessions_on(server: Server, db: str) -> int:
    """Server-side sessions connected to database ``db``."""
    return int(server.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s", (db,))[0][0])


def session_id(w: Any) -> int:
    with w.connection.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        return int(cur.fetchone()[0])


def one(alias: str) -> dict[str, Any]:
    import autopool

    rows = autopool.stats(alias)
    assert len(rows) == 1, rows
    return rows[0]


# -- autopool.stats() ----------------------------------------------------------------------------

def test_stats_fields_follow_real_checkouts(pooled: Callable[..., Pooled], obs_server: Server) -> None:
    from autopool import PoolTimeout
    from autopool.introspect import FIELDS

    db = "autopool_obs_stats"
    obs_server.create_database(db)
    p = pooled({"obs_stats": {"pool_size": 2, "max_overflow": 1, "timeout": 0.4}}, name=db)
    held = [p.wrapper("obs_stats") for _ in range(3)]
    for w in held:
        w.ensure_connection()
    row = one("obs_stats")
    assert list(row) == list(FIELDS)
    assert "password" not in row and obs_server.password not in repr(row)
    assert row["alias"] == "obs_stats" and row["pid"] == os.getpid()
    assert row["driver"] in ("mysqlclient", "pymysql")
    assert (row["host"], row["port"], row["database"], row["user"]) == \
        (obs_server.host, obs_server.port, db, obs_server.user)
    assert row["pool_class"] == "autopool.pool.QueuePool"
    assert (row["pool_size"], row["max_overflow"], row["core_size"], row["timeout"]) == (2, 1, 2, 0.4)
    assert (row["open"], row["idle"], row["checked_out"], row["overflow"], row["waiting"]) == (3, 0, 3, 1, 0)
    assert (row["connections_opened"], row["checkouts"], row["connections_closed"]) == (3, 3, 0)
    assert sessions_on(obs_server, db) == 3  # the numbers are real server sessions

    # A fourth request waits, is seen waiting, then times out.
    errors: list[BaseException] = []

    def fourth() -> None:
        w = p.handler.create_connection("obs_stats")
        try:
            w.ensure_connection()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=fourth)
    t.start()
    assert wait_for(lambda: one("obs_stats")["waiting"] == 1)
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], PoolTimeout)
    row = one("obs_stats")
    assert (row["waiting"], row["timeouts"], row["waits"]) == (0, 1, 1)
    assert 0.3 < row["wait_time_max"] < 5 and row["wait_time_total"] >= row["wait_time_max"]

    # Returned: the overflow connection closes, the core stays idle.
    for w in held:
        w.close()
    row = one("obs_stats")
    assert (row["open"], row["idle"], row["checked_out"], row["overflow"]) == (2, 2, 0, 0)
    assert row["connections_closed"] == 1
    assert wait_for(lambda: sessions_on(obs_server, db) == 2)

    # A connection Django closes outside close() (judged broken) is invalidated.
    w = p.wrapper("obs_stats")
    w.ensure_connection()
    w._close()
    w.connection = None
    row = one("obs_stats")
    assert row["connections_invalidated"] == 1
    # SQLAlchemy's contract: the invalidated entry stays pooled, without a connection, and
    # reconnects at its next checkout; the server has the one live connection.
    assert (row["open"], row["idle"], row["checked_out"]) == (2, 2, 0)
    assert wait_for(lambda: sessions_on(obs_server, db) == 1)
    assert row["checkouts"] == 4


def test_stats_recycled_retired_too_many_waiters(pooled: Callable[..., Pooled]) -> None:
    from autopool import TooManyWaiters

    # SQLAlchemy dates a connection from the start of its connect, so the age must dwarf a
    # connect on a loaded machine: at 0.05 s a slow first connect was recycled at once.
    p = pooled({
        "obs_recycle": {"recycle": 0.5},
        "obs_elastic": {"django_pool_class": "autopool.pool.DjangoQueuePool", "pool_size": 3,
                        "django_core_pool_size": 1, "django_retire_interval": 0.05},
        "obs_waiters": {"pool_size": 1, "max_overflow": 0, "max_waiting": 0},
    })
    w = p.wrapper("obs_recycle")
    w.ensure_connection()
    first = session_id(w)
    w.close()
    assert one("obs_recycle")["connections_recycled"] == 0
    time.sleep(0.6)  # the age under test, not synchronisation
    w.ensure_connection()
    second = session_id(w)
    w.close()
    row = one("obs_recycle")
    assert (row["connections_recycled"], row["checkouts"], row["recycle"]) == (1, 2, 0.5)
    assert second != first

    burst = [p.wrapper("obs_elastic") for _ in range(3)]
    for w in burst:
        w.ensure_connection()
    row = one("obs_elastic")
    assert (row["pool_class"], row["core_size"], row["checked_out"]) == ("autopool.pool.DjangoQueuePool", 1, 3)
    for w in burst:
        w.close()
    row = wait_for(lambda: (lambda r: r if r["connections_retired"] == 2 else None)(one("obs_elastic")))
    assert row and (row["open"], row["idle"]) == (1, 1)

    holder, refused = p.wrapper("obs_waiters"), p.wrapper("obs_waiters")
    holder.ensure_connection()
    with pytest.raises(TooManyWaiters):
        refused.ensure_connection()
    row = one("obs_waiters")
    assert (row["too_many_waiters"], row["max_waiting"], row["checked_out"]) == (1, 0, 1)


def test_stats_filters_and_takes_no_pool_lock(pooled: Callable[..., Pooled]) -> None:
    import autopool

    p = pooled({"obs_lock_a": {}, "obs_lock_b": {}})
    for alias in p.aliases:
        w = p.wrapper(alias)
        w.ensure_connection()
        w.close()
    assert [r["alias"] for r in autopool.stats("obs_lock_a")] == ["obs_lock_a"]
    assert {"obs_lock_a", "obs_lock_b"} <= {r["alias"] for r in autopool.stats()}
    assert autopool.stats("obs_no_such_alias") == []
    # stats() while a checkout holds the pool's lock: it must not wait for it.
    out: list[Any] = []
    with p.pool("obs_lock_a")._lock:
        t = threading.Thread(target=lambda: out.append(autopool.stats("obs_lock_a")), daemon=True)
        t.start()
        t.join(2)
    assert out and out[0][0]["idle"] == 1


# -- the management command in process ------------------------------------------------------------

def call(*args: str) -> str:
    from django.core.management import call_command

    from autopool.management.commands.autopool import Command

    out = io.StringIO()
    call_command(Command(), *args, stdout=out, stderr=out)
    return out.getvalue()


def test_command_stats_and_dispose_in_process(pooled: Callable[..., Pooled], obs_server: Server) -> None:
    from django.core.management import CommandError

    db = "autopool_obs_cmd"
    obs_server.create_database(db)
    p = pooled({"obs_cmd": {"pool_size": 3, "max_overflow": 2}}, name=db)
    held = [p.wrapper("obs_cmd") for _ in range(2)]
    for w in held:
        w.ensure_connection()
    held[0].close()

    rows = json.loads(call("stats", "--json"))
    row = next(r for r in rows if r["alias"] == "obs_cmd")
    assert (row["idle"], row["checked_out"], row["pool_size"], row["max_overflow"]) == (1, 1, 3, 2)

    table = call("stats", "obs_cmd")
    lines = {line.split()[0]: line.split()[1:] for line in table.splitlines() if line.strip()}
    assert lines["alias"] == ["obs_cmd"]
    assert lines["database"] == [db] and lines["checked_out"] == ["1"] and lines["idle"] == ["1"]
    assert lines["wait_time_max"] == ["0.000"]
    assert obs_server.password not in table

    with pytest.raises(CommandError, match="obs_nowhere"):
        call("stats", "obs_nowhere")

    held[1].close()
    assert sessions_on(obs_server, db) == 2
    assert "Disposed 1 pool(s)" in call("dispose", "obs_cmd")
    assert "obs_cmd" not in {r["alias"] for r in json.loads(call("stats", "--json"))}
    assert wait_for(lambda: sessions_on(obs_server, db) == 0)


# -- logging ----------------------------------------------------------------------------------------

class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        # Formatted with tracebacks: an exception's message or repr counts too.
        return "\n".join(self.format(r) for r in self.records)


@pytest.fixture
def capture_logs() -> Iterator[Callable[[int], Capture]]:
    saved = []

    def start(level: int = logging.DEBUG) -> Capture:
        cap = Capture()
        for name in ("autopool", "sqlalchemy"):
            logger = logging.getLogger(name)
            saved.append((logger, logger.level))
            logger.setLevel(level)
            logger.addHandler(cap)
        return cap

    yield start
    for logger, level in saved:
        logger.setLevel(level)
        for h in list(logger.handlers):
            if isinstance(h, Capture):
                logger.removeHandler(h)


def test_logs_name_the_alias_and_never_the_password(pooled: Callable[..., Pooled], obs_server: Server,
                                                    capture_logs: Callable[[int], Capture]) -> None:
    from django.db import OperationalError

    import autopool
    from autopool import PoolTimeout
    from autopool.checks import check_databases

    logs = capture_logs(logging.DEBUG)
    p = pooled({"obs_log": {"pool_size": 1, "max_overflow": 0, "timeout": 0.2, "leak_detection_threshold": 0.1}})
    bad = pooled({"obs_log_bad": {}}, PASSWORD=WRONG_PASSWORD)
    outputs: list[str] = []

    # Real work: queries, a transaction rolled back on return.
    w = p.wrapper("obs_log")
    with w.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID(), %s", ["no secret here"])
    w.set_autocommit(False)
    with w.cursor() as cur:
        cur.execute("SELECT 1")
    w.close()

    # PoolTimeout: one connection held by another thread.
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        h = p.handler.create_connection("obs_log")
        h.ensure_connection()
        held.set()
        release.wait(5)
        h.close()

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(5)
    with pytest.raises(PoolTimeout) as timeout_info:
        p.wrapper("obs_log").ensure_connection()
    outputs.append(repr(timeout_info.value) + str(timeout_info.value))
    # Held past leak_detection_threshold: the housekeeper logs it with the checkout stack.
    assert wait_for(lambda: "a connection of 'obs_log' has been checked out for" in logs.text(), timeout=5)
    release.set()
    t.join()

    # A login failure (wrong password).
    with pytest.raises(OperationalError) as login_info:
        bad.wrapper("obs_log_bad").ensure_connection()
    outputs.append(repr(login_info.value))
    assert "Access denied" in str(login_info.value)

    # Invalidated: closed by Django outside close().
    w = p.wrapper("obs_log")
    w.ensure_connection()
    w._close()
    w.connection = None

    # A leak: a wrapper dropped while holding its connection.
    def leak() -> None:
        lost = p.handler.create_connection("obs_log")
        lost.ensure_connection()

    leak()
    gc.collect()
    assert wait_for(lambda: one("obs_log")["leaks"] == 1, timeout=2)

    # Everything that renders settings or pools.
    outputs.append(repr(autopool.stats()))
    outputs.append(call("stats"))
    outputs.append(call("stats", "--json"))
    dbs = {"obs_log": db_settings(obs_server, POOL={"pool_size": "five"}, CONN_MAX_AGE=60),
           "obs_log_bad": db_settings(obs_server, PASSWORD=WRONG_PASSWORD, POOL={"max_overflw": 1})}
    for installed in (True, False):
        for enabled in (True, False):
            outputs.extend(str(m) + repr(m) for m in check_databases(dbs, installed=installed, enabled=enabled))
    try:
        from prometheus_client import CollectorRegistry, generate_latest

        from autopool.contrib.prometheus import register
    except ImportError:
        pass
    else:
        registry = CollectorRegistry()
        register(registry)
        outputs.append(generate_latest(registry).decode())

    p.close()
    bad.close()
    text = logs.text()
    everything = text + "\n".join(outputs)
    from django.conf import settings

    secrets = {obs_server.password, WRONG_PASSWORD}
    secrets.update(db["PASSWORD"] for db in settings.DATABASES.values() if db.get("PASSWORD"))
    for secret in secrets:
        assert secret and secret not in everything

    # What the log says, each with the alias.
    assert "created QueuePool pool for 'obs_log'" in text
    assert "invalidated a connection of 'obs_log'" in text
    assert "a connection of 'obs_log' was garbage collected without close()" in text
    assert "disposed pool of 'obs_log'" in text
    assert "disposed pool of 'obs_log_bad'" in text
    debug = [r for r in logs.records if r.levelno == logging.DEBUG]
    assert any("checked out from pool" in r.getMessage() and r.name.endswith(".obs_log") for r in debug)
    assert any("Access denied" in logs.format(r) and r.name.endswith(".obs_log_bad") for r in logs.records)


def test_no_debug_logging_on_checkout_when_disabled(pooled: Callable[..., Pooled],
                                                    capture_logs: Callable[[int], Capture],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    p = pooled({"obs_quiet": {"pool_size": 2}})
    w = p.wrapper("obs_quiet")
    w.ensure_connection()
    w.close()
    logs = capture_logs(logging.INFO)
    calls: list[str] = []
    real_debug = logging.Logger.debug

    def spy(self: logging.Logger, *args: Any, **kwargs: Any) -> Any:
        # Reaching Logger.debug at all means the caller did not check isEnabledFor(DEBUG) first.
        if self.name.startswith(("autopool", "sqlalchemy.pool")):
            calls.append(self.name)
        return real_debug(self, *args, **kwargs)

    monkeypatch.setattr(logging.Logger, "debug", spy)
    for _ in range(50):
        w.ensure_connection()
        with w.cursor() as cur:
            cur.execute("SELECT 1")
        w.close()
    assert calls == []
    assert [r for r in logs.records if r.name.startswith("autopool")] == []


# -- manage.py in a subprocess ------------------------------------------------------------------

MANAGE_PY = '''\
import os
import sys

if os.environ.get("OBS_DRIVER") == "pymysql":
    import pymysql

    pymysql.install_as_MySQLdb()
if os.environ.get("OBS_INSTALL", "1") == "1":
    import autopool

    autopool.install()

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "obsproject.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
'''

SETTINGS_PY = '''\
import json
import os

SECRET_KEY = "obs"
INSTALLED_APPS = ["autopool"]
AUTOPOOL_AUTO_INSTALL = os.environ.get("OBS_INSTALL", "1") == "1"  # else the app installs it
USE_TZ = True
DATABASES = json.loads(os.environ["OBS_DATABASES"])
if os.environ.get("OBS_DEBUG_LOG"):
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(name)s %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
        "loggers": {name: {"handlers": ["stderr"], "level": "DEBUG"} for name in ("autopool", "sqlalchemy")},
    }
'''


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("obsproject")
    (root / "manage.py").write_text(MANAGE_PY)
    (root / "obsproject").mkdir()
    (root / "obsproject" / "__init__.py").write_text("")
    (root / "obsproject" / "settings.py").write_text(SETTINGS_PY)
    return root


def manage(project: Path, *args: str, databases: dict[str, Any], install: bool = True,
           driver: str | None = None, debug_log: bool = False, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "AUTOPOOL_ENABLED"}
    environ.update(PYTHONPATH=os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                   OBS_DATABASES=json.dumps(databases), OBS_INSTALL="1" if install else "0",
                   PYTHONDONTWRITEBYTECODE="1")
    if driver:
        environ["OBS_DRIVER"] = driver
    if debug_log:
        environ["OBS_DEBUG_LOG"] = "1"
    environ.update(env or {})
    return subprocess.run([sys.executable, "manage.py", *args], cwd=project, env=environ, text=True,
                          capture_output=True, timeout=timeout)


def table(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in stdout.splitlines()
            if line.strip() and not line.startswith("Note:")}


@pytest.mark.parametrize("driver", ["mysqlclient", "pymysql"])
def test_manage_py_stats_connect(project: Path, obs_server: Server, driver: str) -> None:
    dbs = {"default": db_settings(obs_server, POOL={"pool_size": 4, "max_overflow": 2}),
           "replica": db_settings(obs_server, POOL="fast_and_sane"),
           "plain": db_settings(obs_server)}
    fresh = manage(project, "autopool", "stats", databases=dbs, driver=driver)
    assert fresh.returncode == 0, fresh.stderr
    assert "no pool yet in this process for 'default', 'replica'" in fresh.stdout

    run = manage(project, "autopool", "stats", "--connect", databases=dbs, driver=driver, debug_log=True)
    assert run.returncode == 0, run.stderr
    rows = table(run.stdout)
    assert rows["alias"] == ["default", "replica"]
    assert rows["driver"] == [driver, driver]
    assert rows["pool_size"] == ["4", "5"] and rows["max_overflow"] == ["2", "10"]
    assert rows["idle"] == ["1", "1"] and rows["checkouts"] == ["1", "1"] and rows["checked_out"] == ["0", "0"]
    assert "Note:" not in run.stdout
    assert "created QueuePool pool for 'default'" in run.stderr  # the DEBUG log went to stderr
    assert obs_server.password not in run.stdout + run.stderr

    as_json = manage(project, "autopool", "stats", "replica", "--connect", "--json", databases=dbs, driver=driver)
    assert as_json.returncode == 0, as_json.stderr
    [row] = json.loads(as_json.stdout)
    assert (row["alias"], row["driver"], row["database"], row["connections_opened"]) == ("replica", driver, DB_NAME, 1)

    unpooled = manage(project, "autopool", "stats", "--connect", databases=dbs, install=False)
    assert unpooled.returncode == 0, unpooled.stderr
    assert "autopool.install() was not called in this process" in unpooled.stdout


def test_manage_py_dispose(project: Path, obs_server: Server) -> None:
    dbs = {"default": db_settings(obs_server, POOL={})}
    run = manage(project, "autopool", "dispose", databases=dbs)
    assert run.returncode == 0, run.stderr
    assert "Disposed 0 pool(s) of process" in run.stdout
    run = manage(project, "autopool", "dispose", "nowhere", databases=dbs)
    assert run.returncode == 1 and "nowhere" in run.stderr
    # In a process with pools (here a shell), dispose closes them.
    code = ("from django.db import connections; from django.core.management import call_command; "
            "connections['default'].ensure_connection(); connections['default'].close(); "
            "call_command('autopool', 'dispose'); call_command('autopool', 'stats')")
    run = manage(project, "shell", "-c", code, databases=dbs)
    assert run.returncode == 0, run.stderr
    assert "Disposed 1 pool(s) of process" in run.stdout
    assert "no pool yet in this process for 'default'" in run.stdout


def check_server(project: Path, dbs: dict[str, Any], *args: str, **kw: Any) -> subprocess.CompletedProcess:
    return manage(project, "autopool", "check-server", *args, databases=dbs, **kw)


def test_check_server_headroom(project: Path, obs_server: Server) -> None:
    max_conn = int(obs_server.execute("SELECT @@max_connections")[0][0])
    dbs = {"default": db_settings(obs_server, POOL={"pool_size": 5, "max_overflow": 10}),
           "other": db_settings(obs_server, POOL={"pool_size": 3, "max_overflow": 2}),
           "plain": db_settings(obs_server)}
    if obs_server.socket:
        # The same server through its socket: still one server, so the pools add up.
        dbs["other"].update(HOST=obs_server.socket, PORT="")
    run = check_server(project, dbs, "--processes", "4")
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert out.count("Server ") == 1
    assert "default          pool_size 5 + max_overflow 10 = 15 per process" in out
    assert "other            pool_size 3 + max_overflow 2 = 5 per process" in out
    assert f"max_connections {max_conn}, Threads_connected " in out
    assert "needed: 4 process(es) x 20 = 80" in out
    assert "headroom: " in out and out.rstrip().endswith("OK: the pools fit.")
    assert "WARNING" not in out

    too_many = max_conn // 20 + 1
    run = check_server(project, dbs, "--processes", str(too_many), debug_log=True)
    assert run.returncode == 1
    warning = [line for line in run.stdout.splitlines() if line.startswith("WARNING:")]
    assert len(warning) == 1 and f"{too_many} process(es) x 20 = {too_many * 20} connections do not fit" in warning[0]
    assert "check-server found 1 problem(s)" in run.stderr
    assert obs_server.password not in run.stdout + run.stderr


def test_check_server_warnings_and_errors(project: Path, obs_server: Server) -> None:
    dbs = {"default": db_settings(obs_server, POOL={"pool_size": 2, "max_overflow": -1}),
           "short_wait": db_settings(obs_server, POOL={"recycle": 3600},
                                     OPTIONS={"init_command": "SET SESSION wait_timeout = 60"}),
           "pinged": db_settings(obs_server, POOL={"recycle": 3600, "pre_ping": True},
                                 OPTIONS={"init_command": "SET SESSION wait_timeout = 60"}),
           "bad_login": db_settings(obs_server, PASSWORD=WRONG_PASSWORD, POOL={}),
           "bad_pool": db_settings(obs_server, POOL={"pool_size": 0})}
    run = check_server(project, dbs, debug_log=True)
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    problems = [line for line in lines if line.startswith(("WARNING", "ERROR"))]
    assert any(line.startswith("WARNING: max_overflow=-1 on 'default'") for line in problems)
    assert any(line.startswith("WARNING: short_wait: recycle=3600 s is not below the server's wait_timeout=60 s")
               for line in problems)
    assert not any("pinged" in line for line in problems)
    assert any(line.startswith("ERROR bad_login: cannot query the server: OperationalError") and
               "Access denied" in line for line in problems)
    assert any(line.startswith("ERROR bad_pool: DATABASES['bad_pool']['POOL']['pool_size']") for line in problems)
    assert len(problems) == 4, problems
    for secret in (obs_server.password, WRONG_PASSWORD):
        assert secret not in run.stdout + run.stderr


def test_check_server_without_pools(project: Path, obs_server: Server) -> None:
    run = check_server(project, {"default": db_settings(obs_server)})
    assert run.returncode == 0 and "nothing to check" in run.stdout
    run = check_server(project, {"default": db_settings(obs_server, POOL={})}, "--processes", "0")
    assert run.returncode == 1 and "--processes must be at least 1" in run.stderr
