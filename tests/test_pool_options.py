"""Options that used to fail late, end to end against the real server (issue 16, points 6 and 7).

* ``sqlalchemy.pool.NullPool`` serves Django: checkout, query, close, invalidation after an error,
  a failed health check;
* ``dialect`` given by name works, and one naming the other driver fails at the first checkout
  with an ImproperlyConfigured naming alias and key;
* a callable option that starts returning a bad value: ImproperlyConfigured naming alias and key
  in a request, one ERROR line (no traceback) from housekeeping.
"""
from __future__ import annotations

import logging
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError

import autopool
from autopool import housekeeping, registry
from tests import djsettings
from tests.mariadb import Server
from tests.scenario_main import wait_until
from tests.test_session_state import pooled

DB = djsettings.DB_NAME


def one(conn: Any, sql: str) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()


def conn_id(conn: Any) -> int:
    return int(one(conn, "SELECT CONNECTION_ID()")[0])


def alive(server: Server, cid: int) -> bool:
    return bool(server.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", [cid])[0][0])


def the_pool(alias: str) -> Any:
    [entry] = list(registry.entries(alias))
    return entry.pool


# -- NullPool --------------------------------------------------------------------------------------

NULL = {"django_pool_class": "sqlalchemy.pool.NullPool"}


def test_null_pool_opens_and_closes_a_session_per_request(server: Server) -> None:
    with pooled("np_plain", server, NULL) as conn:
        first = conn_id(conn)
        conn.close()
        wait_until(lambda: not alive(server, first), 10, "the first session's end")
        second = conn_id(conn)
        assert second != first
        [row] = autopool.stats("np_plain")
        assert row["pool_class"] == "sqlalchemy.pool.impl.NullPool" and row["database"] == DB
        assert row["connections_opened"] == 2 and row["connections_closed"] == 1
        conn.close()


def test_null_pool_invalidates_a_connection_after_an_error(server: Server,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with pooled("np_error", server, NULL) as conn:
        cid = conn_id(conn)
        server.execute(f"KILL {cid}")
        with caplog.at_level(logging.DEBUG, logger="autopool"):
            with pytest.raises(OperationalError):
                one(conn, "SELECT 1")
            conn.close()  # errors_occurred: invalidated, not returned
        assert the_pool("np_error").counters.connections_invalidated == 1
        logged = [r.getMessage() for r in caplog.records if r.name == "autopool"]
        assert any(m.startswith("invalidated a connection of 'np_error'") for m in logged), logged
        assert not [m for m in logged if "error while closing" in m], logged
        assert conn_id(conn) != cid  # the next request works, on a new session
        conn.close()


def test_null_pool_with_a_failed_health_check(server: Server) -> None:
    with pooled("np_health", server, NULL, CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True) as conn:
        cid = conn_id(conn)
        old = conn.connection
        conn.close_if_unusable_or_obsolete()  # the next request: the check passes, connection kept
        assert conn_id(conn) == cid and conn.connection is old
        server.execute(f"KILL {cid}")
        conn.close_if_unusable_or_obsolete()  # the next request: the check fails
        assert conn_id(conn) != cid
        assert conn.connection is not old
        assert the_pool("np_health").counters.connections_invalidated == 1


# -- dialect ---------------------------------------------------------------------------------------

def test_a_dialect_name_pings_with_the_drivers_dialect(server: Server) -> None:
    with pooled("dl_name", server, {"pool_size": 1, "max_overflow": 0, "dialect": "mysql", "pre_ping": True}) as conn:
        cid = conn_id(conn)
        conn.close()
        assert the_pool("dl_name")._dialect.driver == ("pymysql" if djsettings.DRIVER == "pymysql" else "mysqldb")
        server.execute(f"KILL {cid}")
        wait_until(lambda: not alive(server, cid), 10, "the killed session's end")
        assert conn_id(conn) != cid  # the ping found it dead and replaced it
        conn.close()


def test_a_dialect_instance_without_a_dbapi_pings_and_replaces(server: Server) -> None:
    """``MySQLDialect_mysqldb()`` as the seed's README had users write it (no DB-API module given)."""
    from sqlalchemy.dialects.mysql.mysqldb import MySQLDialect_mysqldb
    from sqlalchemy.dialects.mysql.pymysql import MySQLDialect_pymysql

    dialect = MySQLDialect_pymysql() if djsettings.DRIVER == "pymysql" else MySQLDialect_mysqldb()
    with pooled("dl_inst", server, {"pool_size": 1, "max_overflow": 0, "dialect": dialect, "pre_ping": True}) as conn:
        cid = conn_id(conn)
        conn.close()
        server.execute(f"KILL {cid}")
        wait_until(lambda: not alive(server, cid), 10, "the killed session's end")
        assert conn_id(conn) != cid  # not NoDBAPILoaded from the failed ping
        conn.close()


def test_a_dialect_of_the_other_driver_fails_at_checkout_naming_alias_and_key(server: Server) -> None:
    other = "mysql+mysqldb" if djsettings.DRIVER == "pymysql" else "mysql+pymysql"
    with pooled("dl_other", server, {"dialect": other}) as conn:
        with pytest.raises(ImproperlyConfigured) as info:
            conn.ensure_connection()
        assert str(info.value).startswith(f"DATABASES['dl_other']['POOL']['dialect']: {other!r} is for ")
        assert list(registry.entries("dl_other")) == []


# -- callable options ------------------------------------------------------------------------------

class Setting:
    """A callable option whose value the test changes."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self) -> Any:
        return self.value


ELASTIC = {"django_pool_class": "autopool.pool.DjangoQueuePool", "pool_size": 2, "max_overflow": 0}


def test_a_callable_turning_bad_fails_the_request_naming_alias_and_key(server: Server) -> None:
    unload = Setting(0.5)
    with pooled("cb_request", server, dict(ELASTIC, django_unload_timeout=unload)) as conn:
        cid = conn_id(conn)
        conn.close()
        unload.value = "soon"
        with pytest.raises(ImproperlyConfigured) as info:
            conn.ensure_connection()
        assert str(info.value).startswith("DATABASES['cb_request']['POOL']['django_unload_timeout']: the callable ")
        assert "returned 'soon'; expected a number >= 0" in str(info.value)
        assert the_pool("cb_request").checkedout() == 0  # nothing leaked by the failed checkout
        unload.value = 0.5
        assert conn_id(conn) == cid
        conn.close()


def test_a_callable_turning_bad_in_housekeeping_logs_one_line(server: Server,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    interval = Setting(0.01)
    with pooled("cb_house", server, dict(ELASTIC, django_retire_interval=interval)) as conn:
        conn_id(conn)
        conn.close()
        pool = the_pool("cb_house")

        def errors() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "autopool" and r.levelno >= logging.ERROR
                    and "cb_house" in r.getMessage()]

        with caplog.at_level(logging.INFO, logger="autopool"):
            housekeeping.run_once()  # the first round schedules the next retirement
            interval.value = -2
            wait_until(lambda: housekeeping.run_once() is not None and errors(), 10, "the housekeeping error")
            for _ in range(5):
                housekeeping.run_once()
            [record] = errors()
            assert record.exc_info is None  # one line, no traceback
            assert "DATABASES['cb_house']['POOL']['django_retire_interval']: the callable " in record.getMessage()
            assert "returned -2" in record.getMessage()
            interval.value = 0.01
            housekeeping.run_once()
            assert len(errors()) == 1
        assert pool.checkedout() == 0
