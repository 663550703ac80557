"""Every checkout starts clean: in the alias's NAME database, with no unread result, without a
role a previous request set when ``reset_session`` is on (issue 16, point 4).

Against the real server, on the driver of ``AUTOPOOL_TEST_DRIVER``; the gevent runs of
scripts/test.sh run the same tests monkey-patched. Pools of one connection make the next request
reuse the connection the previous one returned (checked through ``CONNECTION_ID()``). The rows
of the README's session-state table not pinned here are pinned in tests/test_reliability.py.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connections

import autopool
from autopool import drivers, registry
from tests import djsettings
from tests.mariadb import Server

DB = djsettings.DB_NAME
OTHER_DB = djsettings.OTHER_NAME
ROLE = "autopool_role_r"
ROLE_USER = "autopool_role_u"
ROLE_PASSWORD = "role-user-pw-31"
ONE = {"pool_size": 1, "max_overflow": 0, "timeout": 10}


@contextlib.contextmanager
def pooled(alias: str, server: Server, pool: Any, **overrides: Any) -> Iterator[Any]:
    """A temporary pooled alias: a copy of ``default`` with ``overrides``."""
    entry = copy.deepcopy(connections.settings["default"])
    entry.update(HOST=server.host, PORT=str(server.port), USER=server.user, PASSWORD=server.password,
                 NAME=DB, POOL=pool)
    entry.update(overrides)
    connections.settings[alias] = entry
    try:
        yield connections[alias]
    finally:
        with contextlib.suppress(Exception):
            connections[alias].close()
        with contextlib.suppress(Exception):
            del connections[alias]
        del connections.settings[alias]
        autopool.dispose(alias)


def one(conn: Any, sql: str, params: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def conn_id(conn: Any) -> int:
    return int(one(conn, "SELECT CONNECTION_ID()")[0])


def the_entry(alias: str) -> Any:
    found = list(registry.entries(alias))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def two_tables(server: Server) -> Iterator[str]:
    """``ss_rows`` in both databases: an unqualified INSERT shows which one a connection is in."""
    for db in (DB, OTHER_DB):
        server.execute(f"DROP TABLE IF EXISTS {db}.ss_rows; CREATE TABLE {db}.ss_rows (v INT) ENGINE=InnoDB")
    yield "ss_rows"
    for db in (DB, OTHER_DB):
        server.execute(f"DROP TABLE IF EXISTS {db}.ss_rows")


def rows_in(server: Server, db: str) -> list:
    return [r[0] for r in server.execute(f"SELECT v FROM {db}.ss_rows ORDER BY v")]


# -- the current database --------------------------------------------------------------------------

@pytest.mark.parametrize("pool", [ONE, dict(ONE, reset_session=True), dict(ONE, preset="slow_and_safe")],
                         ids=["default", "reset_session", "slow_and_safe"])
def test_use_in_one_request_does_not_reach_the_next(server: Server, two_tables: str, pool: dict[str, Any]) -> None:
    with pooled("ss_use", server, pool) as conn:
        first = conn_id(conn)
        one(conn, f"USE {OTHER_DB}")
        one(conn, "INSERT INTO ss_rows VALUES (1)")  # request 1 means the other database
        conn.close()
        assert conn_id(conn) == first  # same server session, not a reconnect
        assert one(conn, "SELECT DATABASE()")[0] == DB
        one(conn, "INSERT INTO ss_rows VALUES (2)")
        conn.close()
        # Raw select_db() on the DB-API connection, and a comment before the statement.
        conn.ensure_connection()
        conn.connection.select_db(OTHER_DB)
        conn.close()
        assert one(conn, "SELECT DATABASE()")[0] == DB
        one(conn, f"/* moving */ use `{OTHER_DB}`")
        conn.close()
        assert one(conn, "SELECT DATABASE()")[0] == DB
        assert conn_id(conn) == first
        assert [s["database"] for s in autopool.stats("ss_use")] == [DB]
        conn.close()
    assert rows_in(server, OTHER_DB) == [1]
    assert rows_in(server, DB) == [2]


def _session_counts(conn: Any) -> tuple:
    """(CONNECTION_ID(), the session's own command counters), read through the session itself."""
    with conn.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        cid = cur.fetchone()[0]
        cur.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Questions', 'Com_admin_commands')")
        return cid, sum(int(v) for _, v in cur.fetchall())


def test_a_request_that_stays_in_its_database_costs_no_round_trip(server: Server, two_tables: str) -> None:
    """Restoring the database costs one command, only after a request that changed it.

    Counted by the server for the one pooled session (no other client's traffic counts); the
    closing read's two statements are subtracted."""
    with pooled("ss_cost", server, ONE) as conn:
        cid, before = _session_counts(conn)
        conn.close()
        for _ in range(10):
            one(conn, "SELECT 1")
            conn.close()
        same, after = _session_counts(conn)
        conn.close()
        plain = after - before - 2
        for _ in range(10):
            one(conn, f"USE {OTHER_DB}")
            conn.close()
        again, moved_after = _session_counts(conn)
        conn.close()
        moved = moved_after - after - 2
        assert one(conn, "SELECT DATABASE()")[0] == DB
        conn.close()
    assert cid == same == again  # one session throughout
    assert plain == 10  # one command per one-query request: no check, no restore
    assert moved == 20  # the USE and the one COM_INIT_DB that undoes it


def test_a_dropped_database_is_not_handed_on(server: Server) -> None:
    """A request that drops the database it is in leaves "no database": the connection goes back to NAME."""
    server.execute("CREATE DATABASE IF NOT EXISTS autopool_ss_drop")
    with pooled("ss_drop", server, ONE) as conn:
        first = conn_id(conn)
        one(conn, "USE autopool_ss_drop")
        one(conn, "DROP DATABASE autopool_ss_drop")
        assert one(conn, "SELECT DATABASE()")[0] is None
        conn.close()
        assert one(conn, "SELECT DATABASE()")[0] == DB
        assert conn_id(conn) == first


def test_an_alias_without_name_never_hands_on_a_database(server: Server) -> None:
    """No NAME: a connection cannot be put back in "no database", so one that chose a database is closed."""
    with pooled("ss_noname", server, ONE, NAME="") as conn:
        first = conn_id(conn)
        assert one(conn, "SELECT DATABASE()")[0] is None
        conn.close()
        assert conn_id(conn) == first  # untouched: kept
        one(conn, f"USE {DB}")
        conn.close()
        second = conn_id(conn)
        assert one(conn, "SELECT DATABASE()")[0] is None
        assert second != first
        conn.close()


def test_a_database_chosen_by_a_defaults_file_is_the_connections_own(server: Server, tmp_path: Any) -> None:
    """NAME empty, the database in OPTIONS["read_default_file"] (Django's documented set-up): kept and
    restored like NAME, never closed for being "not NAME"."""
    cnf = tmp_path / "my.cnf"
    cnf.write_text(f"[client]\ndatabase = {DB}\n")
    with pooled("ss_cnf", server, ONE, NAME="", OPTIONS={"charset": "utf8mb4", "read_default_file": str(cnf)}) as conn:
        first = conn_id(conn)
        assert one(conn, "SELECT DATABASE()")[0] == DB
        conn.close()
        assert conn_id(conn) == first
        one(conn, f"USE {OTHER_DB}")
        conn.close()
        assert one(conn, "SELECT DATABASE()")[0] == DB
        assert conn_id(conn) == first
        conn.close()


def test_the_driver_tracks_the_database_without_asking_the_server(server: Server) -> None:
    """The client-side tracking autopool relies on: the driver reports every change, no query made."""
    with pooled("ss_track", server, ONE) as conn:
        conn.ensure_connection()
        driver = the_entry("ss_track").driver
        raw = conn.connection
        assert driver.schema(raw) == DB
        one(conn, f"USE {OTHER_DB}")
        assert driver.schema(raw) == OTHER_DB
        raw.select_db(DB)
        assert driver.schema(raw) == DB
        one(conn, "SET autocommit = 0")  # another tracked change: the database stays known
        assert driver.schema(raw) == DB
        one(conn, "SET autocommit = 1")


def test_tracked_schema_parses_session_state() -> None:
    # Bytes of real replies (PyMySQL's message: info string, then the session state changes).
    assert drivers.tracked_schema(b"\x00\x06\x01\x04\x03hbx") == b"hbx"
    assert drivers.tracked_schema(b"\x00\x11\x00\x0f\nautocommit\x03OFF") is None
    assert drivers.tracked_schema(b"\x00\x01\x01\x01\x00") == b""  # DROP DATABASE of the current one
    assert drivers.tracked_schema(b"") is None
    assert drivers.tracked_schema(None) is None
    assert drivers.tracked_schema(b"\x00\x09\x01\x04\x03abcZ") is None  # truncated: no crash, no name


# -- unread results --------------------------------------------------------------------------------

def test_the_socket_poll_sees_a_waiting_reply_a_goodbye_and_a_closed_descriptor() -> None:
    """``Driver.pending_input``'s poll: what it must see on a returned connection's socket."""
    import socket

    if sys.platform.startswith("linux"):
        # The GIL-holding libc call is the one in use (select.poll is the fallback).
        assert drivers._LIBC_POLL is not None
    ours, peer = socket.socketpair()
    try:
        ready = drivers._poller(ours.fileno())
        assert ready() is False
        peer.sendall(b"x")  # a reply nobody read
        assert ready() is True
        assert ours.recv(1) == b"x"
        assert ready() is False
        peer.close()  # the server's goodbye
        assert ready() is True
        closed = ours.fileno()
        ours.close()
        assert drivers._poller(closed)() is True  # a descriptor gone: never pooled
    finally:
        ours.close()
        peer.close()



def _ss_cursor(conn: Any) -> Any:
    cursors = importlib.import_module(conn.Database.__name__ + ".cursors")
    return conn.connection.cursor(cursors.SSCursor)


@pytest.mark.parametrize("reset_session", [False, True])
def test_an_unread_streaming_result_is_never_handed_on(server: Server, reset_session: bool) -> None:
    with pooled("ss_stream", server, dict(ONE, reset_session=reset_session)) as conn:
        first = conn_id(conn)
        stream = _ss_cursor(conn)
        stream.execute("SELECT seq FROM seq_1_to_100000")
        assert stream.fetchone() == (1,)
        conn.close()  # request ends with the stream still referenced and unread
        assert one(conn, "SELECT 42") == (42,)  # no "Commands out of sync"
        assert conn_id(conn) != first  # that connection was closed, not pooled
        conn.close()
        del stream
        # A stream read to its end leaves the connection clean: it is kept.
        second = conn_id(conn)
        stream = _ss_cursor(conn)
        stream.execute("SELECT seq FROM seq_1_to_10")
        assert len(stream.fetchall()) == 10
        conn.close()
        assert conn_id(conn) == second
        conn.close()
        del stream


def test_an_unread_streaming_result_is_detected_without_a_round_trip(server: Server) -> None:
    with pooled("ss_detect", server, ONE) as conn:
        conn.ensure_connection()
        driver = the_entry("ss_detect").driver
        raw = conn.connection
        assert driver.unread_result(raw) is False
        stream = _ss_cursor(conn)
        stream.execute("SELECT seq FROM seq_1_to_1000")
        stream.fetchone()
        assert driver.unread_result(raw) is True
        stream.fetchall()
        assert driver.unread_result(raw) is False
        stream.close()


@pytest.mark.skipif(djsettings.DRIVER != "mysqlclient", reason="PyMySQL reads further results itself")
def test_an_unread_further_result_is_never_handed_on(server: Server) -> None:
    """mysqlclient: a CALL's further results left unread would fail the next command (2014)."""
    server.execute(f"DROP PROCEDURE IF EXISTS {DB}.ss_two; CREATE PROCEDURE {DB}.ss_two() "
                   "BEGIN SELECT 1; SELECT 2; END")
    try:
        with pooled("ss_call", server, ONE) as conn:
            first = conn_id(conn)
            cur = conn.connection.cursor()
            cur.execute("CALL ss_two()")
            assert cur.fetchall() == ((1,),)
            conn.close()
            assert one(conn, "SELECT 42") == (42,)
            assert conn_id(conn) != first
            conn.close()
            del cur
    finally:
        server.execute(f"DROP PROCEDURE IF EXISTS {DB}.ss_two")


# -- the role --------------------------------------------------------------------------------------

@pytest.fixture
def role_user(server: Server) -> Iterator[dict[str, str]]:
    """A user of its own with a grantable role (root makes them; the shared test user is left alone)."""
    statements = [f"CREATE ROLE IF NOT EXISTS {ROLE}", f"GRANT SELECT ON {DB}.* TO {ROLE}"]
    for host in ("127.0.0.1", "localhost", "%"):
        statements += [f"CREATE USER IF NOT EXISTS '{ROLE_USER}'@'{host}' IDENTIFIED BY '{ROLE_PASSWORD}'",
                       f"GRANT ALL PRIVILEGES ON {DB}.* TO '{ROLE_USER}'@'{host}'",
                       f"GRANT {ROLE} TO '{ROLE_USER}'@'{host}'"]
    _as_root(server, statements)
    yield {"USER": ROLE_USER, "PASSWORD": ROLE_PASSWORD}
    _as_root(server, [f"DROP USER IF EXISTS '{ROLE_USER}'@'{h}'" for h in ("127.0.0.1", "localhost", "%")]
             + [f"DROP ROLE IF EXISTS {ROLE}"])


def _as_root(server: Server, statements: list) -> None:
    root = server.admin_connect()
    try:
        cur = root.cursor()
        for sql in statements:
            cur.execute(sql)
        root.commit()
    finally:
        root.close()


def _role_after_set_role(server: Server, user: dict[str, str], reset: bool) -> dict[str, Any]:
    with pooled("ss_role", server, dict(ONE, reset_session=reset), **user) as conn:
        first = conn_id(conn)
        start = one(conn, "SELECT CURRENT_ROLE()")[0]
        one(conn, f"SET ROLE {ROLE}")
        assert one(conn, "SELECT CURRENT_ROLE()")[0] == ROLE
        conn.close()
        return {"start": start, "next": one(conn, "SELECT CURRENT_ROLE()")[0], "same": conn_id(conn) == first}


def test_reset_session_undoes_set_role(server: Server, role_user: dict[str, str]) -> None:
    state = _role_after_set_role(server, role_user, reset=True)
    assert state["same"] and state["start"] is None
    assert state["next"] is None


def test_without_reset_session_the_role_leaks(server: Server, role_user: dict[str, str]) -> None:
    """The default, pinned: the role lives with the server session (README's table says so)."""
    state = _role_after_set_role(server, role_user, reset=False)
    assert state["same"] and state["next"] == ROLE


def test_reset_session_restores_the_default_role(server: Server, role_user: dict[str, str]) -> None:
    """An account with a default role gets it back after the reset, as on a new connection."""
    _as_root(server, [f"SET DEFAULT ROLE {ROLE} FOR '{ROLE_USER}'@'{h}'" for h in ("127.0.0.1", "localhost", "%")])
    with pooled("ss_defrole", server, dict(ONE, reset_session=True), **role_user) as conn:
        first = conn_id(conn)
        assert one(conn, "SELECT CURRENT_ROLE()")[0] == ROLE
        one(conn, "SET ROLE NONE")
        conn.close()
        assert one(conn, "SELECT CURRENT_ROLE()")[0] == ROLE
        assert conn_id(conn) == first


def test_a_failed_session_set_up_leaves_nothing_checked_out(server: Server) -> None:
    """reset_session reads the login role at the first checkout; if that fails, the connection
    is closed, the error reaches the caller, and the pool serves on."""
    from unittest import mock

    from django.db import OperationalError

    with pooled("ss_setup", server, dict(ONE, reset_session=True)) as conn:
        conn_id(conn)
        conn.close()
        autopool.dispose("ss_setup")  # the next checkout opens a fresh connection
        broken = OperationalError(2013, "Lost connection to server during query")
        with mock.patch.object(drivers.Driver, "_role_statement", side_effect=broken):
            with pytest.raises(OperationalError):
                conn.ensure_connection()
        pool = the_entry("ss_setup").pool
        assert pool.checkedout() == 0
        assert one(conn, "SELECT DATABASE()")[0] == DB  # the pool serves on
        conn.close()
