"""Session-wide MariaDB server for the test suite, started only when a test needs it.

Django is configured in ``pytest_configure`` (test modules import models at collection time), with
the server's address left as a placeholder. The server starts at the first use of the ``mariadb``
or ``server`` fixture, or at the first Django connection attempt of a test that asked for neither;
the placeholder is then filled in, in the settings dicts Django's connection handler shares. So
tests of pure pool logic (fakes and a clock) run on a machine with no MariaDB at all.

Set AUTOPOOL_TEST_MYSQL_HOST (and _PORT/_USER/_PASSWORD) to test against an existing server instead;
``scripts/test.sh`` also sets _PID/_DIR, naming a server it started for the tests (tests.mariadb).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.mariadb import Server

_server: Server | None = None
_starting = threading.RLock()


def get_server() -> Server:
    """The session's server: started (and the test databases migrated) at the first call."""
    global _server
    with _starting:
        if _server is None:
            from tests import djsettings

            # Time zone tables cost ~1 s; without them named zones (SET time_zone='Europe/Paris') fail.
            server = Server.from_env_or_start(load_tz=True)
            _server = server  # set first: point_at's own connections come back here (an RLock)
            try:
                djsettings.point_at(server)
            except BaseException:
                _server = None
                server.stop()
                raise
    return _server


def _start_server_on_first_connect() -> None:
    """A test that reaches the database without asking for the ``server`` fixture still gets one."""
    from django.db.backends.mysql.base import DatabaseWrapper

    from tests import djsettings

    original = DatabaseWrapper.get_connection_params

    def get_connection_params(self: Any) -> Any:
        s, nowhere = self.settings_dict, djsettings.PLACEHOLDER
        if (s.get("HOST"), str(s.get("PORT"))) == (nowhere.host, str(nowhere.port)):  # not another server's
            get_server()
        return original(self)

    get_connection_params.__wrapped__ = original  # type: ignore[attr-defined]
    DatabaseWrapper.get_connection_params = get_connection_params  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    from tests import djsettings

    djsettings.use_driver()  # before anything imports MySQLdb
    djsettings.configure()
    _start_server_on_first_connect()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _server
    import autopool

    autopool.dispose()
    if _server is not None:
        _server.stop()
        _server = None


@pytest.fixture(scope="session")
def mariadb() -> Server:
    return get_server()


@pytest.fixture
def server(mariadb: Server) -> Server:
    return mariadb


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    """Every test starts and ends with no connection held by this thread."""
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        conn.close()
    yield
    for conn in connections.all(initialized_only=True):
        conn.close()


def connection_id(alias: str = "default") -> int:
    from django.db import connections

    with connections[alias].cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        return cur.fetchone()[0]
