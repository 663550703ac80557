"""Django settings for the test suite, built from the test server.

Aliases:
  ``default``  pooled, database ``autopool_test``
  ``other``    pooled, database ``autopool_other`` as a different user
  ``stock``    same database as ``default``, no POOL: stock Django

``AUTOPOOL_TEST_DRIVER=pymysql`` runs everything on PyMySQL.
"""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

DRIVER = os.environ.get("AUTOPOOL_TEST_DRIVER", "mysqlclient")
DB_NAME = "autopool_test"
OTHER_NAME = "autopool_other"
OTHER_USER = "autopool_other"
OTHER_PASSWORD = "other-secret-pw-42"
DEFAULT_POOL: dict[str, Any] = {"pool_size": 5, "max_overflow": 5, "timeout": 10}


def use_driver() -> None:
    if DRIVER == "pymysql":
        import pymysql

        pymysql.install_as_MySQLdb()


def database(server: Any, name: str, pool: Any = None, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "ENGINE": "django.db.backends.mysql",
        "NAME": name,
        "USER": server.user,
        "PASSWORD": server.password,
        "HOST": server.host,
        "PORT": str(server.port),
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"charset": "utf8mb4"},
        "TEST": {"NAME": "test_" + name},
    }
    if pool is not None:
        entry["POOL"] = pool
    entry.update(extra)
    return entry


# Until a test needs the server (tests/conftest.py), the aliases point nowhere: a connection
# attempt before ``point_at`` fails at once instead of reaching some other server.
PLACEHOLDER = SimpleNamespace(host="127.0.0.1", port=1, user="no-server-yet", password="")


def configure() -> None:
    """Configure Django (apps, models, autopool installed) without a server."""
    import django
    from django.conf import settings

    if settings.configured:
        return
    use_driver()
    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        SECRET_KEY="autopool-tests",
        INSTALLED_APPS=["django.contrib.contenttypes", "autopool", "tests.testapp"],
        DATABASES={
            "default": database(PLACEHOLDER, DB_NAME, dict(DEFAULT_POOL)),
            "other": database(PLACEHOLDER, OTHER_NAME, dict(DEFAULT_POOL)),
            "stock": database(PLACEHOLDER, DB_NAME),
        },
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        LOGGING_CONFIG=None,
    )
    import autopool

    autopool.install()
    django.setup()


def point_at(server: Any) -> None:
    """Fill in the server's address (in place: Django's connection handler shares these dicts),
    create the test databases and the second user, and migrate."""
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    server.create_database(DB_NAME)
    server.create_database(OTHER_NAME)
    for host in ("127.0.0.1", "localhost", "%"):
        server.execute(f"CREATE USER IF NOT EXISTS '{OTHER_USER}'@'{host}' IDENTIFIED BY '{OTHER_PASSWORD}'")
        server.execute(f"GRANT ALL PRIVILEGES ON {OTHER_NAME}.* TO '{OTHER_USER}'@'{host}'")
    address = {"HOST": server.host, "PORT": str(server.port), "USER": server.user, "PASSWORD": server.password}
    for alias in ("default", "other", "stock"):  # only these: tests add aliases of their own servers
        settings.DATABASES[alias].update(address)
    settings.DATABASES["other"].update(USER=OTHER_USER, PASSWORD=OTHER_PASSWORD)
    for conn in connections.all():
        conn.close()
    import autopool

    autopool.dispose()  # nothing pooled may remember the placeholder
    call_command("migrate", run_syncdb=True, verbosity=0, database="default")
    call_command("migrate", run_syncdb=True, verbosity=0, database="other")
    for conn in connections.all():
        conn.close()
