"""Reliability and security against the real MariaDB (issue 7).

Every test is bounded in time: waits are events, barriers or polls with deadlines, never sleeps
used as synchronisation, and every thread, greenlet, server and proxy a test starts, it stops.

* killed connections (``KILL``, ``wait_timeout``, ``recycle``, killed mid-query);
* server restart under load, network faults through ``tests/tcpproxy.py`` (gevent ones run in a
  fresh monkey-patched process: ``tests/reliability_scenarios.py``);
* no data lost or leaked: rollback on return, interrupted ``atomic()``, session state with and
  without ``reset_session``;
* right database, right user, no credentials anywhere;
* the soak (``tests/soak.py``; ``AUTOPOOL_SOAK_SECONDS``, 20 s by default here, CI may use 120).

Destructive tests (restart, ``SET GLOBAL``) run on a private server, never the shared one.
README.rst (Guarantees and failure modes) names the test behind each promise.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from django.db import DatabaseError, OperationalError, ProgrammingError, connections, transaction

import autopool
from autopool import registry
from tests import djsettings
from tests.mariadb import ENV, Server
from tests.scenario_main import wait_until
from tests.tcpproxy import ProxyProcess

DB = djsettings.DB_NAME
DRIVER = djsettings.DRIVER
PRIVATE_DB = "autopool_rel"
WRONG_PASSWORD = "Wr0ng-rel-Pa55word-77"


# -- helpers ---------------------------------------------------------------------------------------

def pool_of(alias: str) -> Any:
    found = list(registry.entries(alias))
    assert len(found) == 1, found
    return found[0].pool


def assert_consistent(pool: Any) -> None:
    """Nothing checked out, nobody waiting, every open connection idle."""
    assert pool.checkedout() == 0, pool.status()
    assert pool.waiting() == 0, pool.status()
    assert pool.opened() == pool.checkedin(), pool.status()


def sessions(server: Server, db: str | None = None, user: str | None = None) -> list[tuple]:
    """(ID, USER, DB, COMMAND, STATE, INFO) of the server's client sessions, filtered."""
    sql = "SELECT ID, USER, DB, COMMAND, STATE, INFO FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()"
    args: list[Any] = []
    if db is not None:
        sql += " AND DB = %s"
        args.append(db)
    if user is not None:
        sql += " AND USER = %s"
        args.append(user)
    return [tuple(r) for r in server.execute(sql, args)]


def query(conn: Any, sql: str, params: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def conn_id(conn: Any) -> int:
    return int(query(conn, "SELECT CONNECTION_ID()")[0])


@contextlib.contextmanager
def pooled(alias: str, server: Server, pool: Any, name: str = DB, **overrides: Any) -> Iterator[Any]:
    """A temporary ``DATABASES`` alias (a copy of ``default`` with Django's defaults filled in)."""
    entry = copy.deepcopy(connections.settings["default"])
    entry.update(HOST=server.host, PORT=str(server.port), USER=server.user, PASSWORD=server.password,
                 NAME=name, POOL=pool)
    entry.update(overrides)
    if pool is None:
        entry.pop("POOL")
    connections.settings[alias] = entry
    try:
        yield connections[alias]
    finally:
        try:
            wrapper = connections[alias]
            if wrapper.in_atomic_block:
                wrapper.needs_rollback = True
            wrapper.close()
        except Exception:  # noqa: BLE001 - a test may have broken it on purpose
            pass
        with contextlib.suppress(Exception):
            del connections[alias]
        del connections.settings[alias]
        autopool.dispose(alias)


class Later(threading.Thread):
    """Run ``action`` in a thread once ``ready()`` holds (polled with a deadline)."""

    def __init__(self, ready: Callable[[], bool], action: Callable[[], Any], timeout: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.ready, self.action, self.timeout = ready, action, timeout
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while not self.ready():
                if time.monotonic() > deadline:
                    raise TimeoutError("Later: never ready")
                time.sleep(0.01)
            self.action()
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc
        finally:
            self.done.set()

    def finish(self) -> None:
        self.join(self.timeout + 5)
        assert not self.is_alive()
        if self.error is not None:
            raise self.error


def running(server: Server, cid: int, text: str) -> Callable[[], bool]:
    """True once session ``cid`` is executing a statement containing ``text``."""
    def check() -> bool:
        rows = server.execute("SELECT INFO FROM information_schema.PROCESSLIST WHERE ID = %s", (cid,))
        return bool(rows and rows[0][0] and text in rows[0][0])
    return check


def gone(server: Server, cid: int) -> Callable[[], bool]:
    return lambda: not server.execute("SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", (cid,))


@pytest.fixture(autouse=True, scope="module")
def _fresh_pools_afterwards() -> Iterator[None]:
    """Tests here grow the suite's own pools (threads, a test database); later modules start
    from fresh ones, as if this module had not run."""
    yield
    connections.close_all()
    autopool.dispose()


@pytest.fixture(scope="module")
def private_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A MariaDB of this module's own, for restarts and ``SET GLOBAL``; always a fresh process."""
    with mock.patch.dict(os.environ):
        for key in ("HOST", "PORT", "USER", "PASSWORD"):
            os.environ.pop(ENV + key, None)
        server = Server.from_env_or_start(base_dir=str(tmp_path_factory.mktemp("srv")))
    server.create_database(PRIVATE_DB)
    try:
        yield server
    finally:
        # A scenario subprocess may have restarted it: the pid file names the live process.
        adopt_restarted(server)
        server.stop()


def adopt_restarted(server: Server) -> None:
    """After a subprocess restarted ``server``, point it at the live mariadbd (by its pid file)."""
    assert server.dir is not None
    try:
        with open(os.path.join(server.dir, "pid")) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            ours = server.dir.encode() in f.read()
    except (OSError, ValueError):
        return
    if ours and pid != server.pid:
        old = server._proc
        server._proc, server.pid = None, pid
        if old is not None:
            old.poll()  # reap the stopped one


def run_scenario(name: str, env: dict[str, str], timeout: float = 120, **params: Any) -> dict[str, Any]:
    """Run ``tests.reliability_scenarios NAME`` in a fresh monkey-patched process; its JSON result."""
    full_env = dict(os.environ, **env)
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.reliability_scenarios", name, json.dumps(params)],
                              capture_output=True, text=True, env=full_env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # run() killed it
        pytest.fail(f"scenario {name} did not finish within {timeout} s:\n{(exc.stderr or '')[-4000:]}")
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- 1. killed connections -----------------------------------------------------------------------

@pytest.mark.parametrize("option", ["pre_ping", "django_pre_ping"])
def test_killed_idle_connections_are_replaced_transparently_with_pre_ping(server: Server, option: str) -> None:
    with pooled("rel_ping", server, {"pool_size": 3, "max_overflow": 0, option: True}) as conn:
        # Three idle connections, opened at once by three threads.
        barrier, ids, errors = threading.Barrier(3), [], []

        def hold() -> None:
            try:
                c = connections["rel_ping"]
                ids.append(conn_id(c))
                barrier.wait(10)
                c.close()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                connections["rel_ping"].close()

        threads = [threading.Thread(target=hold) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not errors and len(set(ids)) == 3
        pool = pool_of("rel_ping")
        assert pool.checkedin() == 3
        for cid in ids:
            server.execute(f"KILL {cid}")
        for cid in ids:
            wait_until(gone(server, cid), message=f"session {cid} gone")
        seen = []
        for _ in range(6):  # every request succeeds; none gets a killed session
            seen.append(conn_id(conn))
            conn.close()
        assert not set(seen) & set(ids)
        assert_consistent(pool)
        assert pool.counters.connections_invalidated >= 1


def test_killed_idle_connection_without_pre_ping_fails_at_most_once(server: Server) -> None:
    with pooled("rel_noping", server, {"pool_size": 1, "max_overflow": 0}) as conn:
        cid = conn_id(conn)
        conn.close()
        pool = pool_of("rel_noping")
        server.execute(f"KILL {cid}")
        wait_until(gone(server, cid), message="killed session gone")
        failures = 0
        got = []
        for _ in range(3):
            try:
                got.append(conn_id(conn))
            except OperationalError as exc:
                failures += 1
                assert exc.args[0] in (2006, 2013, 4031), exc.args  # server gone / lost connection
            finally:
                conn.close()
        assert failures <= 1
        assert len(got) >= 2 and cid not in got
        assert len(set(got)) == 1  # once replaced, the new connection is reused
        assert_consistent(pool)


def test_connection_killed_after_checkout_fails_cleanly_and_is_invalidated(server: Server) -> None:
    with pooled("rel_kill", server, {"pool_size": 2, "max_overflow": 0}) as conn:
        cid = conn_id(conn)  # checked out and in use by this request
        pool = pool_of("rel_kill")
        before = pool.counters.connections_invalidated
        server.execute(f"KILL {cid}")
        wait_until(gone(server, cid), message="killed session gone")
        with pytest.raises(OperationalError):
            conn_id(conn)
        conn.close()  # end of request: discarded, never pooled
        assert pool.counters.connections_invalidated == before + 1
        assert_consistent(pool)
        assert conn_id(conn) != cid
        conn.close()


def test_connection_killed_mid_query_is_invalidated_not_returned(server: Server) -> None:
    with pooled("rel_mid", server, {"pool_size": 2, "max_overflow": 0}) as conn:
        cid = conn_id(conn)
        pool = pool_of("rel_mid")
        before = pool.counters.connections_invalidated
        killer = Later(running(server, cid, "SLEEP(30)"), lambda: server.execute(f"KILL {cid}"))
        killer.start()
        start = time.monotonic()
        with pytest.raises(OperationalError):
            query(conn, "SELECT SLEEP(30)")
        assert time.monotonic() - start < 10
        killer.finish()
        conn.close()
        assert pool.counters.connections_invalidated == before + 1
        assert_consistent(pool)
        assert conn_id(conn) != cid
        conn.close()


def test_kill_query_keeps_the_session_usable(server: Server) -> None:
    """KILL QUERY interrupts the statement only: Django's health check then keeps the connection."""
    with pooled("rel_kq", server, {"pool_size": 1, "max_overflow": 0}) as conn:
        cid = conn_id(conn)
        killer = Later(running(server, cid, "SLEEP(30)"), lambda: server.execute(f"KILL QUERY {cid}"))
        killer.start()
        start = time.monotonic()
        try:
            row = query(conn, "SELECT SLEEP(30)")
            assert row[0] == 1  # MariaDB: SLEEP() returns 1 when interrupted
        except OperationalError as exc:
            assert exc.args[0] == 1317  # query execution was interrupted
        assert time.monotonic() - start < 10
        killer.finish()
        conn.close_if_unusable_or_obsolete()  # what Django runs at the end of a request
        assert conn.connection is None  # returned to the pool ...
        assert conn_id(conn) == cid  # ... and handed out again: the session survived
        conn.close()
        assert_consistent(pool_of("rel_kq"))


def test_wait_timeout_expiry(private_server: Server) -> None:
    """Idle connections closed by the server's wait_timeout: pre_ping replaces them; without it
    each fails at most once, cleanly, and the pool recovers."""
    srv = private_server
    original = srv.execute("SELECT @@GLOBAL.wait_timeout")[0][0]
    srv.execute("SET GLOBAL wait_timeout = 1")
    try:
        for pool_setting, max_failures in (({"pool_size": 2, "max_overflow": 0, "pre_ping": True}, 0),
                                           ({"pool_size": 2, "max_overflow": 0}, 1)):
            with pooled("rel_wt", srv, pool_setting, name=PRIVATE_DB) as conn:
                cid = conn_id(conn)
                conn.close()
                wait_until(gone(srv, cid), timeout=15, message="wait_timeout closing the idle session")
                failures, got = 0, []
                for _ in range(4):
                    try:
                        got.append(conn_id(conn))
                    except OperationalError:
                        failures += 1
                    finally:
                        conn.close()
                assert failures <= max_failures, (pool_setting, failures)
                assert got and cid not in got
                assert_consistent(pool_of("rel_wt"))
    finally:
        srv.execute(f"SET GLOBAL wait_timeout = {int(original)}")


def test_recycle_replaces_old_connections(server: Server) -> None:
    with pooled("rel_recycle", server, {"pool_size": 1, "max_overflow": 0, "recycle": 60}) as conn:
        cid = conn_id(conn)
        conn.close()
        assert conn_id(conn) == cid  # young: reused
        conn.close()
        pool = pool_of("rel_recycle")
        rec = pool._idle[0][0]
        rec.starttime -= 61  # as if it had been open for over a minute
        new = conn_id(conn)
        conn.close()
        assert new != cid
        assert pool.counters.connections_recycled == 1
        wait_until(gone(server, cid), message="recycled session closed on the server")
        assert_consistent(pool)


# -- 4. no data lost or leaked -------------------------------------------------------------------

@pytest.fixture
def rel_table(server: Server) -> Iterator[str]:
    server.execute(f"DROP TABLE IF EXISTS {DB}.rel_rows; CREATE TABLE {DB}.rel_rows "
                   "(id INT AUTO_INCREMENT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB")
    server.execute(f"DROP TABLE IF EXISTS {DB}.rel_lock; CREATE TABLE {DB}.rel_lock (x INT) ENGINE=InnoDB")
    yield "rel_rows"
    server.execute(f"DROP TABLE IF EXISTS {DB}.rel_rows; DROP TABLE IF EXISTS {DB}.rel_lock")


def visible(server: Server, v: int) -> int:
    return int(server.execute(f"SELECT COUNT(*) FROM {DB}.rel_rows WHERE v = %s", (v,))[0][0])


def test_aborted_requests_never_commit_their_writes(server: Server, rel_table: str) -> None:
    with pooled("rel_tx", server, {"pool_size": 1, "max_overflow": 0}) as conn:
        cid = conn_id(conn)
        conn.close()
        # a) autocommit off, write, request ends without commit
        conn.set_autocommit(False)
        query(conn, "INSERT INTO rel_rows (v) VALUES (1)")
        conn.close()
        # b) raw START TRANSACTION, request ends
        query(conn, "START TRANSACTION")
        query(conn, "INSERT INTO rel_rows (v) VALUES (2)")
        conn.close()
        # c) atomic() left by an exception
        with pytest.raises(ZeroDivisionError):
            with transaction.atomic(using="rel_tx"):
                query(conn, "INSERT INTO rel_rows (v) VALUES (3)")
                1 / 0
        conn.close()
        # d) nested atomic: the inner block fails, the outer one commits only its own write
        with transaction.atomic(using="rel_tx"):
            query(conn, "INSERT INTO rel_rows (v) VALUES (4)")
            with pytest.raises(ZeroDivisionError):
                with transaction.atomic(using="rel_tx"):
                    query(conn, "INSERT INTO rel_rows (v) VALUES (5)")
                    1 / 0
        conn.close()
        # The next user commits: nothing from the aborted requests may ride along.
        with transaction.atomic(using="rel_tx"):
            query(conn, "INSERT INTO rel_rows (v) VALUES (6)")
        assert conn_id(conn) == cid  # all on the one pooled connection
        conn.close()
        assert [visible(server, v) for v in (1, 2, 3, 4, 5, 6)] == [0, 0, 0, 1, 0, 1]
        assert pool_of("rel_tx").counters.rollbacks_on_return >= 2
        assert_consistent(pool_of("rel_tx"))


DIRTY = [
    "SET @leak = 'secret-of-user-1'",
    "CREATE TEMPORARY TABLE leak_tmp (x INT)",
    "SET SESSION sql_mode = 'ANSI_QUOTES'",
    "SET SESSION time_zone = '+05:00'",
    "SET SESSION foreign_key_checks = 0",
    "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET NAMES latin1",
    "SET autocommit = 0",
    "SELECT GET_LOCK('autopool_leak', 0)",
    "LOCK TABLES rel_lock WRITE",  # last: afterwards only rel_lock may be used
]


def isolation(conn: Any) -> str:
    try:
        return query(conn, "SELECT @@SESSION.transaction_isolation")[0]
    except OperationalError as exc:  # MariaDB < 11.1 calls it tx_isolation
        assert exc.args[0] == 1193, exc.args  # unknown system variable
        return query(conn, "SELECT @@SESSION.tx_isolation")[0]


def session_state(conn: Any, server: Server) -> dict[str, Any]:
    """What the next user of a connection sees, and what the server shows about its locks."""
    cid = conn_id(conn)
    row = query(conn, "SELECT @leak, @@SESSION.sql_mode, @@SESSION.time_zone, @@SESSION.foreign_key_checks, "
                      "@@SESSION.autocommit, @@character_set_client, @@character_set_connection, "
                      "@@character_set_results, @@collation_connection, IS_USED_LOCK('autopool_leak'), @init_mark")
    state = dict(zip(["user_var", "sql_mode", "time_zone", "foreign_key_checks", "autocommit", "cs_client",
                      "cs_connection", "cs_results", "collation", "named_lock_holder", "init_mark"], row))
    state["named_lock_held"] = state.pop("named_lock_holder") == cid
    state["isolation"] = isolation(conn)
    try:
        query(conn, "SELECT COUNT(*) FROM leak_tmp")
        state["temp_table"] = True
    except DatabaseError as exc:
        # 1146: gone; 1100: not locked with LOCK TABLES held (the lock is checked below).
        assert exc.args[0] in (1146, 1100), exc.args
        state["temp_table"] = False
    in_use = server.execute(f"SHOW OPEN TABLES FROM {DB} LIKE 'rel_lock'")
    state["table_locked"] = bool(in_use and int(in_use[0][2]) > 0)
    if state["table_locked"]:
        with contextlib.suppress(Exception):
            query(conn, "UNLOCK TABLES")  # so the test can clean up
    try:
        # Round trip and the server's own reading of it (2 characters, not 6 bytes taken as latin1).
        state["emoji"] = tuple(query(conn, "SELECT %s, CHAR_LENGTH(%s)", ["é😀", "é😀"])) == ("é😀", 2)
    except Exception:  # noqa: BLE001 - a wrong connection character set may also refuse it
        state["emoji"] = False
    return state


def dirty_then_next_user(server: Server, alias: str, reset: bool, options: dict[str, Any]) -> dict[str, Any]:
    pool_setting = {"pool_size": 1, "max_overflow": 0, "reset_session": reset}
    with pooled(alias, server, pool_setting, OPTIONS=options) as conn:
        first = conn_id(conn)
        for sql in DIRTY:
            query(conn, sql)
        conn.close()
        # The queries Django runs on this checkout (CaptureQueriesContext would hide them).
        conn.force_debug_cursor = True
        try:
            start = len(conn.queries_log)
            conn.ensure_connection()
            init_sql = " ".join(q["sql"] for q in list(conn.queries_log)[start:])
        finally:
            conn.force_debug_cursor = False
        state = session_state(conn, server)
        state["same_connection"] = conn_id(conn) == first
        state["init_sql"] = init_sql
        state["resets"] = pool_of(alias).counters.session_resets
        conn.close()
        with contextlib.suppress(Exception):
            server.execute("DO RELEASE_ALL_LOCKS()")
        return state


OPTIONS = {"charset": "utf8mb4", "init_command": "SET @init_mark = 'init-ran'"}


def test_reset_session_resets_everything_and_restores_the_setup(server: Server, rel_table: str) -> None:
    state = dirty_then_next_user(server, "rel_reset", True, OPTIONS)
    assert state["same_connection"]  # COM_RESET_CONNECTION keeps the session, not a reconnect
    assert state["resets"] >= 1
    # Reset: everything user 1 changed.
    assert state["user_var"] is None
    assert state["temp_table"] is False
    assert state["sql_mode"] == server.execute("SELECT @@GLOBAL.sql_mode")[0][0]
    assert state["time_zone"] == "SYSTEM"
    assert state["foreign_key_checks"] == 1
    assert state["named_lock_held"] is False
    assert state["table_locked"] is False
    # Restored: the driver's and Django's session set-up.
    assert state["autocommit"] == 1
    assert (state["cs_client"], state["cs_connection"], state["cs_results"]) == ("utf8mb4",) * 3
    assert state["emoji"]
    assert state["init_mark"] == "init-ran"  # OPTIONS["init_command"] ran again
    assert state["isolation"] == "READ-COMMITTED"  # Django's init_connection_state ran again ...
    assert "ISOLATION LEVEL READ COMMITTED" in state["init_sql"]  # ... on this checkout


def test_reset_session_keeps_a_configured_collation(server: Server, rel_table: str) -> None:
    options = dict(OPTIONS, collation="utf8mb4_unicode_ci")
    state = dirty_then_next_user(server, "rel_coll", True, options)
    assert state["collation"] == "utf8mb4_unicode_ci"
    assert state["cs_client"] == "utf8mb4" and state["emoji"]


def test_without_reset_session_what_leaks_is_pinned(server: Server, rel_table: str) -> None:
    """The default (reset_session=False), pinned down: what the next user of the connection sees."""
    state = dirty_then_next_user(server, "rel_noreset", False, OPTIONS)
    assert state["same_connection"]
    assert state["resets"] == 0
    # Never leaks: transactions are rolled back and autocommit is restored from the server status.
    assert state["autocommit"] == 1
    # Leaks (documented in README.rst): session state lives with the server session.
    assert state["user_var"] == "secret-of-user-1"
    assert state["sql_mode"] == "ANSI_QUOTES"
    assert state["time_zone"] == "+05:00"
    assert state["foreign_key_checks"] == 0
    assert state["named_lock_held"] is True
    assert state["table_locked"] is True  # other sessions block on rel_lock until the holder unlocks
    assert state["cs_client"] == "latin1" and not state["emoji"]
    # ... and the temporary table (hidden here by LOCK TABLES, see the next test).
    assert state["init_mark"] == "init-ran"  # set once at connect, kept
    # Django's session set-up is not re-run on reuse: SET SESSION TRANSACTION ISOLATION LEVEL
    # from user 1 stays (Django's own is per physical connection).
    assert state["isolation"] == "SERIALIZABLE"
    assert "ISOLATION" not in state["init_sql"]


def test_without_reset_session_temporary_tables_leak(server: Server, rel_table: str) -> None:
    with pooled("rel_tmp", server, {"pool_size": 1, "max_overflow": 0}) as conn:
        query(conn, "CREATE TEMPORARY TABLE leak_tmp (x INT)")
        query(conn, "INSERT INTO leak_tmp VALUES (42)")
        conn.close()
        assert query(conn, "SELECT x FROM leak_tmp")[0] == 42
        conn.close()
    with pooled("rel_tmp", server, {"pool_size": 1, "max_overflow": 0, "reset_session": True}) as conn:
        query(conn, "CREATE TEMPORARY TABLE leak_tmp (x INT)")
        conn.close()
        with pytest.raises(ProgrammingError, match="leak_tmp") as info:
            query(conn, "SELECT x FROM leak_tmp")
        assert info.value.args[0] == 1146  # the reset dropped it: no such table
        conn.close()


# -- gevent scenarios (a fresh monkey-patched process each) ---------------------------------------

# The scenarios and the soak run in subprocesses of their own: under a monkey-patched pytest they
# would run exactly as under a plain one, so scripts/test.sh's gevent runs deselect them.
subprocess_run = pytest.mark.gevent_subprocess


@pytest.fixture(scope="module")
def gevent_env(mariadb: Server) -> Iterator[dict[str, str]]:
    pytest.importorskip("gevent")
    mariadb.create_database("autopool_rel_gevent")
    yield mariadb.env()
    mariadb.execute("DROP DATABASE IF EXISTS autopool_rel_gevent")


@subprocess_run
def test_interrupted_queries_never_hand_their_reply_to_the_next_user(gevent_env: dict[str, str]) -> None:
    """gevent.kill / gevent.Timeout while a query runs, inside and outside atomic(): the connection
    is closed (cooperative mysqlclient) or force-closed (PyMySQL), never pooled with a reply in
    flight; nothing the victim wrote survives; the next user gets its own results."""
    r = run_scenario("interrupt", gevent_env)
    if DRIVER == "mysqlclient":
        assert r["class"] == "CooperativeConnection"  # the cooperative wait was the one interrupted
    for case in ("kill_select", "timeout_select", "kill_atomic", "timeout_atomic"):
        c = r[case]
        assert c["started"] and c["victim_dead"] and c["finished"], (case, c)
        assert c["n_wrong"] == 0, (case, c["wrong"])
        assert c["errors"] == [], (case, c)
        assert c["rows"] == 0, case  # the INSERT inside atomic() is gone
        p = c["pool"]
        assert (p["checked_out"], p["waiting"], p["opened"]) == (0, 0, p["idle"]), (case, p)
    assert r["timeout_atomic"]["pool"]["invalidated"] == 4  # each victim's connection: closed


@subprocess_run
def test_a_killed_waiter_takes_no_connection_with_it(gevent_env: dict[str, str]) -> None:
    """Killed while queued (gevent.kill, gevent.Timeout), and killed after a returned connection
    was handed to it but before it ran again: the pool keeps its one connection."""
    r = run_scenario("killed_waiter", gevent_env)
    for how, error in (("kill", "GreenletExit"), ("timeout", "Timeout"), ("handed", "GreenletExit")):
        c = r[how]
        assert c["held"] and c["queued"], (how, c)  # the waiter really was in the queue
        assert c["greenlets"] == {"holder": [True, None], "waiter": [True, error]}, (how, c)
        assert "waiter_got_a_connection" not in c, (how, c)
        if how == "handed":
            assert c["at_kill"]["waiting"] == 0, c  # dequeued: the connection was handed to it
            assert c["next_checkout"] == ["ok", c["holder_id"]], c  # that connection came back
        else:
            assert c["waiting_after_kill"] == 0, (how, c)
            assert c["next_checkout"][0] == "ok", (how, c)
        assert c["next_checkout_s"] < 1, (how, c)
        assert (c["pool"]["checked_out"], c["pool"]["waiting"], c["pool"]["opened"]) == (0, 0, 1), (how, c)


CLEAN_OUTAGE_ERRORS = {
    "django.db.utils.OperationalError": {2002, 2003, 2006, 2013, 1053, 1927, 4031},
    "autopool.errors.PoolTimeout": {None},
}


@subprocess_run
@pytest.mark.parametrize("pre_ping", [False, True], ids=["no_pre_ping", "pre_ping"])
def test_server_restart_under_load(private_server: Server, pre_ping: bool) -> None:
    srv = private_server
    r = run_scenario("restart", srv.env(), timeout=150, db=PRIVATE_DB, dir=srv.dir, pid=srv.pid,
                     pre_ping=pre_ping)
    adopt_restarted(srv)
    assert r["pid"] == srv.pid
    assert r["warm"] and r["outage_seen"] and r["recovered"], r
    assert r["unfinished"] == 0  # no greenlet left waiting
    for kind in r["errors"]:
        cls, code = json.loads(kind)
        assert code in CLEAN_OUTAGE_ERRORS.get(cls, ()), kind
    print(f"\nrestart ({'pre_ping' if pre_ping else 'no pre_ping'}): longest failed request "
          f"{r['max_failed_s']:.2f} s, first success {r['first_ok_after_up_s']:.2f} s after the server was up",
          file=sys.stderr)
    assert r["max_failed_s"] < 2  # README: none waits longer than the pool's timeout (2 s here)
    assert r["first_ok_after_up_s"] is not None and r["first_ok_after_up_s"] < 1.0
    assert r["failed_after_up_plus_1s"] == 0
    if pre_ping:
        assert r["failed_after_up"] == 0
    p = r["pool_after"]
    assert (p["checked_out"], p["waiting"], p["opened"]) == (0, 0, p["idle"]), p
    assert r["settled"] and r["db_sessions"] == p["opened"]


@subprocess_run
@pytest.mark.parametrize("midstream", [False, True], ids=["no_reply", "reply_stops_midstream"])
def test_stalled_server_is_bounded_by_read_timeout_and_others_are_served(gevent_env: dict[str, str],
                                                                        midstream: bool) -> None:
    params: dict[str, Any] = {"read_timeout": 1}
    if midstream:
        params.update(sql="SELECT REPEAT('x', 4000000)", after_bytes=1000)
    r = run_scenario("stall", gevent_env, **params)
    kind, elapsed = r["victim"][0], r["victim"][1]
    assert kind == ["django.db.utils.OperationalError", 2013], r["victim"]
    assert 0.75 <= elapsed < 1 + 1.5
    assert r["victim_finished"] and r["died_of"] == []
    p = r["pool"]
    assert (p["checked_out"], p["waiting"], p["opened"], p["invalidated"]) == (0, 0, p["idle"], 1), \
        (p, r.get("stuck"))
    assert "other_errors" not in r
    if DRIVER == "mysqlclient":
        assert r["cooperative"] == "CooperativeConnection"
        if not midstream:  # bounded by autopool's cooperative wait, which honours read_timeout
            assert "read_timeout expired" in r["victim"][2]
    if midstream and DRIVER == "mysqlclient":
        # Documented limitation: once a reply has begun, mysqlclient reads the rest in C, so a
        # reply that stops mid-stream blocks the hub -- bounded by read_timeout.
        assert r["max_gap"] < 1 + 1.0
    else:
        assert r["max_gap"] < 0.5, r["max_gap"]
        assert r["served_during_stall"] >= 10


@subprocess_run
def test_frozen_server_connect_is_bounded_and_other_greenlets_keep_working(gevent_env: dict[str, str]) -> None:
    r = run_scenario("blackhole", gevent_env, connect_timeout=1, read_timeout=1)
    kind, elapsed = r["frozen"]
    assert kind == ["django.db.utils.OperationalError", 2013]
    assert 0.75 <= elapsed < 1 + 1.5
    assert r["frozen_finished"]
    assert r["ended_by"] == {"frozen": None, "other": None}  # no greenlet died of an error
    assert r["max_gap"] < 0.5, r["max_gap"]  # mysqlclient connects in gevent's thread pool
    assert r["served_meanwhile"] >= 10
    assert r["frozen_pool"]["opened"] == 0 and r["frozen_pool"]["waiting"] == 0  # the slot came back


# -- 3. network faults in process (threads; gevent when pytest itself is patched) -----------------

def proxied(proxy: ProxyProcess, **options: Any) -> dict[str, Any]:
    return {"HOST": proxy.host, "PORT": str(proxy.port), "OPTIONS": dict(charset="utf8mb4", **options)}


def upstream_port(conn: Any) -> int:
    host = query(conn, "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")[0]
    return int(host.rsplit(":", 1)[1])


@pytest.fixture
def proxy(server: Server) -> Iterator[ProxyProcess]:
    with ProxyProcess(server.host, server.port) as p:
        yield p


def test_frozen_server_connect_is_bounded(server: Server, proxy: ProxyProcess) -> None:
    """Accepts, never answers: connect_timeout bounds mysqlclient; PyMySQL reads the handshake with
    read_timeout, so it needs both (see the next test)."""
    proxy.set_mode("blackhole")
    timeouts = {"connect_timeout": 1} if DRIVER == "mysqlclient" else {"connect_timeout": 1, "read_timeout": 1}
    with pooled("rel_frozen", server, {"pool_size": 2, "max_overflow": 0, "timeout": 5},
                **proxied(proxy, **timeouts)) as conn:
        start = time.monotonic()
        with pytest.raises(OperationalError) as info:
            conn.ensure_connection()
        assert 0.5 <= time.monotonic() - start < 3
        assert info.value.args[0] == 2013
        pool = pool_of("rel_frozen")
        assert (pool.opened(), pool.waiting()) == (0, 0)  # the slot came back
        conn.close()
        proxy.set_mode("forward")
        assert conn_id(conn) > 0  # the server answers again: so does the pool
        conn.close()
        assert_consistent(pool)


@pytest.mark.skipif(DRIVER != "pymysql", reason="PyMySQL only: mysqlclient's handshake read is bounded by "
                                                "connect_timeout (test_frozen_server_connect_is_bounded)")
def test_pymysql_without_read_timeout_waits_for_a_frozen_server_forever(server: Server,
                                                                        proxy: ProxyProcess) -> None:
    proxy.set_mode("blackhole")
    with pooled("rel_frozen2", server, {"pool_size": 1, "max_overflow": 0}, **proxied(proxy, connect_timeout=1)):
        outcome: list[BaseException] = []

        def connect() -> None:
            try:
                connections["rel_frozen2"].ensure_connection()
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)
            finally:
                connections["rel_frozen2"].close()

        t = threading.Thread(target=connect, daemon=True)
        t.start()
        t.join(2.5)
        assert t.is_alive() and not outcome  # connect_timeout=1 did not bound it
        wait_until(lambda: proxy.cut() > 0, message="proxy cut")  # release it
        t.join(10)
        assert not t.is_alive() and isinstance(outcome[0], OperationalError)


@pytest.mark.parametrize("midstream", [False, True], ids=["no_reply", "reply_stops_midstream"])
def test_stalled_reply_is_bounded_by_read_timeout(server: Server, proxy: ProxyProcess, midstream: bool) -> None:
    with pooled("rel_stall", server, {"pool_size": 2, "max_overflow": 0},
                **proxied(proxy, connect_timeout=2, read_timeout=1)) as conn:
        cid = conn_id(conn)
        port = upstream_port(conn)
        pool = pool_of("rel_stall")
        before = pool.counters.connections_invalidated
        if midstream:
            proxy.stall(port, after_bytes=1000, requests=False)
            sql = "SELECT REPEAT('x', 4000000)"
        else:
            proxy.stall(port)
            sql = "SELECT 1"
        start = time.monotonic()
        with pytest.raises(OperationalError) as info:
            query(conn, sql)
        assert 0.8 <= time.monotonic() - start < 3
        assert info.value.args[0] == 2013
        conn.close()
        assert pool.counters.connections_invalidated == before + 1
        assert_consistent(pool)
        proxy.resume()
        assert conn_id(conn) != cid  # never the stalled connection again
        conn.close()


def test_cut_network(server: Server, proxy: ProxyProcess) -> None:
    """Every connection reset: the one in use fails cleanly and is discarded; idle ones are
    replaced transparently with pre_ping."""
    with pooled("rel_cut", server, {"pool_size": 3, "max_overflow": 0, "django_pre_ping": True},
                **proxied(proxy, connect_timeout=2, read_timeout=5)) as conn:
        ready, go = threading.Barrier(3), threading.Event()
        idle_ids: list[int] = []

        def hold() -> None:
            try:
                idle_ids.append(conn_id(connections["rel_cut"]))
                ready.wait(10)
                go.wait(10)
            finally:
                connections["rel_cut"].close()

        threads = [threading.Thread(target=hold) for _ in range(2)]
        for t in threads:
            t.start()
        in_use = conn_id(conn)
        ready.wait(10)
        go.set()
        for t in threads:
            t.join(10)
        pool = pool_of("rel_cut")
        assert pool.checkedin() == 2 and pool.checkedout() == 1
        assert proxy.cut() == 3
        with pytest.raises(OperationalError):
            query(conn, "SELECT 1")
        conn.close()
        seen = []
        for _ in range(3):
            seen.append(conn_id(conn))
            conn.close()
        assert not set(seen) & set(idle_ids + [in_use])
        assert_consistent(pool)


# -- 5. right database, right user, no credentials -------------------------------------------------

def test_test_database_and_real_database_never_share_connections(server: Server) -> None:
    """Django's test runner switches NAME to the test database: no connection crosses over, in
    either direction, including one checked out before the switch and returned after it."""
    from django.test.utils import setup_databases, teardown_databases

    from tests.testapp.models import Row

    real = DB
    test_name = connections.settings["default"]["TEST"]["NAME"]
    real_ids = set()
    for _ in range(3):
        with connections["default"].cursor() as cur:
            cur.execute("SELECT CONNECTION_ID(), DATABASE()")
            cid, name = cur.fetchone()
        assert name == real
        real_ids.add(cid)
        connections["default"].close()
    # A request of another thread holds a real-database connection across the switch.
    held, release, in_flight = threading.Event(), threading.Event(), []

    def hold() -> None:
        try:
            in_flight.append(conn_id(connections["default"]))
            held.set()
            release.wait(30)
        finally:
            connections["default"].close()

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(10)
    real_ids.update(in_flight)
    old_config = setup_databases(verbosity=0, interactive=False, aliases={"default"}, serialized_aliases=set())
    test_ids = set()
    try:
        for _ in range(5):
            with connections["default"].cursor() as cur:
                cur.execute("SELECT CONNECTION_ID(), DATABASE()")
                cid, name = cur.fetchone()
            assert name == test_name
            test_ids.add(cid)
            connections["default"].close()
        Row.objects.create(value=4242)
        connections["default"].close()
        release.set()  # the in-flight real connection comes back now: closed, never reused
        t.join(10)
        wait_until(gone(server, in_flight[0]), message="the in-flight real connection closed")
        for _ in range(5):
            test_ids.add(conn_id(connections["default"]))
            connections["default"].close()
        assert not test_ids & real_ids
        pooled_user = connections.settings["default"]["USER"]
        wait_until(lambda: not sessions(server, db=real, user=pooled_user),
                   message="no pooled session left on the real database")
    finally:
        release.set()
        t.join(10)
        connections["default"].close()
        teardown_databases(old_config, verbosity=0)
    after = set()
    for _ in range(3):
        with connections["default"].cursor() as cur:
            cur.execute("SELECT CONNECTION_ID(), DATABASE()")
            cid, name = cur.fetchone()
        assert name == real
        after.add(cid)
        connections["default"].close()
    assert not after & test_ids
    assert not Row.objects.filter(value=4242).exists()
    connections["default"].close()
    assert not sessions(server, db=test_name)


def test_aliases_with_different_users_never_share_a_connection(server: Server) -> None:
    seen: dict[str, set] = {"default": set(), "other": set()}
    wrong: list[Any] = []
    barrier = threading.Barrier(6)

    def work(i: int) -> None:
        try:
            barrier.wait(10)
            for n in range(20):
                alias = ("default", "other")[(i + n) % 2]
                with connections[alias].cursor() as cur:
                    cur.execute("SELECT CONNECTION_ID(), CURRENT_USER(), DATABASE()")
                    cid, user, name = cur.fetchone()
                expected_user = connections.settings[alias]["USER"]
                if not user.startswith(expected_user + "@") or name != connections.settings[alias]["NAME"]:
                    wrong.append((alias, user, name))
                seen[alias].add(cid)
                connections[alias].close()
            done.append(i)
        finally:
            connections.close_all()

    done: list[int] = []
    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert sorted(done) == list(range(6))  # every thread ran to the end (an error would also fail it)
    assert not wrong
    assert seen["default"] and seen["other"] and not seen["default"] & seen["other"]


class Grab(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))  # includes tracebacks (exc_info)


def test_credentials_never_appear(server: Server) -> None:
    """Logs (autopool and sqlalchemy.pool at DEBUG, echo on), stats, errors of a failed login,
    reprs of entries, pools and configs, and check messages never contain a password."""
    from django.conf import settings

    from autopool.checks import check_databases

    grab = Grab()
    loggers = [logging.getLogger(n) for n in ("autopool", "sqlalchemy.pool")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(grab)
        lg.setLevel(logging.DEBUG)
    texts: list[str] = []
    try:
        pool_setting = {"pool_size": 1, "max_overflow": 0, "timeout": 0.2, "echo": "debug", "pre_ping": True,
                        "reset_session": True}
        with pooled("rel_cred", server, pool_setting) as conn:
            cid = conn_id(conn)
            conn.set_autocommit(False)
            query(conn, "SELECT 1")
            conn.close()  # rolled back and reset on return
            server.execute(f"KILL {cid}")
            wait_until(gone(server, cid))
            conn_id(conn)  # pre-ping replaces the killed connection
            # PoolTimeout while this thread holds the only connection
            errors: list[BaseException] = []

            def second() -> None:
                try:
                    connections["rel_cred"].ensure_connection()
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)
                finally:
                    connections["rel_cred"].close()

            t = threading.Thread(target=second)
            t.start()
            t.join(10)
            assert isinstance(errors[0], autopool.PoolTimeout)
            texts.append("".join(traceback.format_exception(errors[0])))
            conn.close()
            for entry in registry.entries():
                texts += [repr(entry), repr(entry.pool), entry.pool.status(), repr(entry.config), str(entry.config),
                          repr(entry.params)]
            texts.append(repr(autopool.stats()))
            with pooled("rel_badpw", server, {"pool_size": 1}, PASSWORD=WRONG_PASSWORD) as bad:
                with pytest.raises(OperationalError) as login:
                    bad.ensure_connection()
                assert login.value.args[0] == 1045  # access denied
                texts += [str(login.value), repr(login.value), "".join(traceback.format_exception(login.value))]
            dbs = {a: dict(connections.settings[a]) for a in ("default", "other")}
            dbs["bad"] = dict(dbs["default"], PASSWORD=WRONG_PASSWORD, POOL={"pool_szie": 1}, CONN_MAX_AGE=60)
            for installed in (True, False):
                for enabled in (True, False):
                    texts += [str(m) + repr(m) for m in check_databases(dbs, installed=installed, enabled=enabled)]
    finally:
        for lg, level in saved:
            lg.removeHandler(grab)
            lg.setLevel(level)
    everything = "\n".join(texts + grab.lines)
    # The logs were on, down to SQLAlchemy's per-checkout DEBUG lines (echo="debug").
    assert any("rel_cred" in line and "checked out from pool" in line for line in grab.lines)
    assert any("rel_cred" in line and "pre-ping" in line for line in grab.lines)
    secrets = {server.password, WRONG_PASSWORD, djsettings.OTHER_PASSWORD}
    secrets.update(db["PASSWORD"] for db in settings.DATABASES.values() if db.get("PASSWORD"))
    for secret in secrets:
        assert secret not in everything, f"a password leaked: {secret[:3]}..."


# -- 6. soak ---------------------------------------------------------------------------------------

@subprocess_run
def test_soak(mariadb: Server) -> None:
    """tests/soak.py for AUTOPOOL_SOAK_SECONDS (default 20 here; CI may set 120)."""
    pytest.importorskip("gevent")
    seconds = float(os.environ.get("AUTOPOOL_SOAK_SECONDS") or 20)
    env = dict(os.environ, **mariadb.env())
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.soak", "--seconds", str(seconds), "--json"],
                              capture_output=True, text=True, env=env, timeout=seconds + 120)
    except subprocess.TimeoutExpired:
        pytest.fail("the soak did not finish in time")
    assert proc.returncode in (0, 1), proc.stderr[-4000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = json.dumps({k: r[k] for k in ("checks", "outcomes", "broken", "unexpected", "memory", "pools",
                                             "server_sessions", "pool_connections")}, indent=1)
    assert not r["broken"], summary
    assert not r["unexpected"], summary
    assert r["checks"]["workers_finished"], summary
    assert r["checks"]["pools_consistent"], summary
    assert r["server_sessions"] == r["pool_connections"], summary
    assert r["checks"]["memory_bounded"], summary
    assert r["ok"] > 100 * seconds / 20 and r["pool_timeouts"] > 0 and r["kills"] > 0, summary
    assert r["passed"], summary


def test_every_guarantee_is_mapped_to_tests_shown_to_fail() -> None:
    """docs/guarantees.rst ("Guarantees and failure modes") cites tests; tests/GUARANTEES.rst maps
    every guarantee to its tests and records the break that made them fail. Drift in either fails
    here: a documented section or cited test missing from the map, a mapped test that does not exist
    (as a test function at module level) or is skipped unconditionally, or a row with no break."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "guarantees.rst").read_text(encoding="utf-8")
    mapping = (root / "tests" / "GUARANTEES.rst").read_text(encoding="utf-8")
    sections = re.findall(r"\n([^\n]+)\n~{3,}\n", doc)
    assert len(sections) >= 7, sections
    for title in sections:
        if title != "Known gap":
            assert title in mapping, f"docs section {title!r} is missing from tests/GUARANTEES.rst"
    defined: dict[str, dict[str, ast.FunctionDef]] = {}
    for path in (root / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined[path.name] = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}

    def unconditional_skip(fn: ast.FunctionDef) -> bool:
        return any(isinstance(d, ast.Attribute) and d.attr == "skip" for d in fn.decorator_list)

    mapped = set(re.findall(r"``tests/(test_\w+\.py)::(test_\w+)", mapping))
    assert len(mapped) >= 20, mapped
    for module, name in mapped:
        fn = defined.get(module, {}).get(name)
        assert fn is not None, f"tests/GUARANTEES.rst maps tests/{module}::{name}, which does not exist"
        assert not unconditional_skip(fn), f"tests/{module}::{name} is always skipped"
    mapped_names = {name for _, name in mapped}
    cited = set(re.findall(r"``(?:tests/test_\w+\.py::|…::)?(test_\w+)(?:\[\w+\])?``", doc))
    assert len(cited) >= 20, cited
    assert cited <= mapped_names, f"cited by the docs, not in tests/GUARANTEES.rst: {sorted(cited - mapped_names)}"
    # Every row says how it was shown to fail: the break made on purpose and what failed.
    table = mapping.split(".. guarantees-start", 1)[1].split(".. guarantees-end", 1)[0]
    rows = re.findall(r"^   \* - (.+?)(?=^   \* - |\Z)", table, re.S | re.M)
    assert len(rows) >= 15, len(rows)
    for row in rows[1:]:  # the header row names the columns
        cells = re.split(r"^     - ", row, flags=re.M)
        assert len(cells) == 3, row
        assert "``tests/test_" in cells[1], f"no test for: {cells[0].strip()}"
        assert cells[2].strip(), f"no break recorded for: {cells[0].strip()}"
