"""Session-wide MariaDB server for the test suite.

``get_server()`` starts it lazily, once: ``pytest_configure`` calls it so that Django settings can be
configured from its host/port before any test module imports models.
Set AUTOPOOL_TEST_MYSQL_HOST (and _PORT/_USER/_PASSWORD) to test against an existing server instead.
"""
from __future__ import annotations

from typing import Optional

import pytest

from tests.mariadb import Server

_server: Optional[Server] = None


def get_server() -> Server:
    global _server
    if _server is None:
        # Time zone tables cost ~1 s; without them named zones (SET time_zone='Europe/Paris') fail.
        _server = Server.from_env_or_start(load_tz=True)
    return _server


def pytest_configure(config: pytest.Config) -> None:
    from tests import djsettings

    djsettings.use_driver()  # before anything imports MySQLdb
    djsettings.configure(get_server())


def pytest_unconfigure(config: pytest.Config) -> None:
    global _server
    try:
        import autopool

        autopool.dispose()
    except Exception:  # noqa: BLE001 - the server stops anyway
        pass
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
def _close_connections():
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
