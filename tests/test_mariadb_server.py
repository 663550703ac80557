"""The test server itself: it must answer, and survive a restart on the same port."""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

from tests.mariadb import ENV, TEST_PASSWORD, TEST_USER, Server, _driver


def connect_as_test_user(server: Server, **kw: object):
    env = server.env()
    return _driver().connect(host=env["AUTOPOOL_TEST_MYSQL_HOST"], port=int(env["AUTOPOOL_TEST_MYSQL_PORT"]),
                             user=env["AUTOPOOL_TEST_MYSQL_USER"], password=env["AUTOPOOL_TEST_MYSQL_PASSWORD"],
                             **kw)


def test_version_is_mariadb(mariadb: Server) -> None:
    assert "MariaDB" in mariadb.execute("SELECT VERSION()")[0][0]


def test_test_user_over_tcp(mariadb: Server) -> None:
    conn = connect_as_test_user(mariadb)
    try:
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER(), @@character_set_server")
        user, charset = cur.fetchone()
    finally:
        conn.close()
    if not mariadb.external:
        assert (mariadb.user, mariadb.password) == (TEST_USER, TEST_PASSWORD)
        assert user.startswith(TEST_USER + "@")
        assert charset == "utf8mb4"


def test_create_database(mariadb: Server) -> None:
    mariadb.create_database("autopool_harness")
    mariadb.execute("CREATE TABLE autopool_harness.t (s VARCHAR(10)); INSERT INTO autopool_harness.t VALUES ('é😀')")
    mariadb.create_database("autopool_harness")  # drops and recreates: the table is gone
    assert mariadb.execute("SHOW TABLES FROM autopool_harness") == []
    rows = mariadb.execute("SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA "
                           "WHERE SCHEMA_NAME = 'autopool_harness'")
    assert rows == [("utf8mb4",)]
    mariadb.execute("DROP DATABASE autopool_harness")


def test_status_counts_connections(mariadb: Server) -> None:
    before = mariadb.status("Threads_connected")
    assert before >= 1  # the admin connection reading it
    conn = connect_as_test_user(mariadb)
    try:
        assert mariadb.status("Threads_connected") >= 2
    finally:
        conn.close()
    with pytest.raises(KeyError):
        mariadb.status("No_such_status_variable")


def test_time_zone_tables(mariadb: Server) -> None:
    if mariadb.external:
        loaded = mariadb.execute("SELECT COUNT(*) FROM mysql.time_zone_name")[0][0]
        if not loaded:
            pytest.skip(f"the external server {mariadb.host}:{mariadb.port} has no time zone tables "
                        "(load them with mariadb-tzinfo-to-sql)")
    rows = mariadb.execute("SELECT CONVERT_TZ('2020-01-01 00:00:00', 'UTC', 'Europe/Paris')")
    assert str(rows[0][0]) == "2020-01-01 01:00:00"


@pytest.fixture
def own_server(tmp_path: Any) -> Iterator[Server]:
    """A second, private server: restarting the session one would break other tests' connections."""
    with mock.patch.dict(os.environ):
        for key in ("HOST", "PORT", "USER", "PASSWORD", "PID", "DIR"):
            os.environ.pop(ENV + key, None)
        server = Server.from_env_or_start(base_dir=str(tmp_path))
    assert not server.external and not server.adopted
    try:
        yield server
    finally:
        server.stop()
    assert server.pid is None


def test_only_a_server_started_here_can_be_restarted(mariadb: Server) -> None:
    if mariadb.external or mariadb.adopted:
        with pytest.raises(RuntimeError, match="did not start"):
            mariadb.restart()
    else:
        assert mariadb.pid is not None and mariadb.dir is not None  # restartable (not done: shared)


def test_restart_keeps_port_and_data(own_server: Server) -> None:
    mariadb = own_server
    port, pid = mariadb.port, mariadb.pid
    mariadb.create_database("autopool_restart")
    mariadb.execute("CREATE TABLE autopool_restart.t (i INT) ENGINE=InnoDB; INSERT INTO autopool_restart.t VALUES (1)")
    conn = connect_as_test_user(mariadb)
    mariadb.restart()
    assert (mariadb.port, mariadb.env()["AUTOPOOL_TEST_MYSQL_PORT"]) == (port, str(port))
    assert mariadb.pid != pid
    with pytest.raises(_driver().OperationalError):  # the old session died with the old process
        conn.cursor().execute("SELECT 1")
    conn = connect_as_test_user(mariadb)  # a new TCP connection to the same port works
    try:
        cur = conn.cursor()
        cur.execute("SELECT i FROM autopool_restart.t")
        assert cur.fetchall() == ((1,),)
    finally:
        conn.close()
    mariadb.execute("DROP DATABASE autopool_restart")
