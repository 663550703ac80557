"""Settings of the autopool example project, driven by the environment.

Database server: ``AUTOPOOL_TEST_MYSQL_HOST``/``_PORT``/``_USER``/``_PASSWORD``
(what ``python -m tests.mariadb start`` exports) and ``EXAMPLE_DB_NAME``
(default ``autopool_example``).

``EXAMPLE_DRIVER``: ``mysqlclient`` (default) or ``pymysql`` (installed as
``MySQLdb`` here, before Django imports its MySQL backend).

``EXAMPLE_MODE``:

* ``autopool`` (default): ``POOL`` = pool_size 10, max_overflow 0, timeout 30
  and ``CONN_MAX_AGE`` 0 (connections go back to the pool after each request);
  ``EXAMPLE_POOL_SIZE`` overrides the size, ``EXAMPLE_POOL_OPTIONS`` (a JSON
  object, e.g. ``{"cooperative": true}``) adds or overrides options;
* ``stock``: no pool, ``CONN_MAX_AGE`` 0 (Django's default: a new connection
  per request);
* ``persistent``: no pool, ``CONN_MAX_AGE`` None (Django's persistent
  connections: one per thread, i.e. per greenlet under gevent).
"""
import json
import os

DRIVER = os.environ.get("EXAMPLE_DRIVER", "mysqlclient").strip().lower()
if DRIVER == "pymysql":
    import pymysql

    pymysql.install_as_MySQLdb()
elif DRIVER not in ("mysqlclient", "mysqldb", ""):
    raise RuntimeError(f"EXAMPLE_DRIVER must be 'mysqlclient' or 'pymysql', not {DRIVER!r}")

MODE = os.environ.get("EXAMPLE_MODE", "autopool").strip().lower()
if MODE not in ("autopool", "stock", "persistent"):
    raise RuntimeError(f"EXAMPLE_MODE must be 'autopool', 'stock' or 'persistent', not {MODE!r}")

SECRET_KEY = os.environ.get("EXAMPLE_SECRET_KEY", "autopool-example-not-secret")
DEBUG = os.environ.get("EXAMPLE_DEBUG", "") == "1"  # DEBUG records every query: keep it off under load
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = ["shop"]
MIDDLEWARE = []
ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"
ASGI_APPLICATION = "example_project.asgi.application"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_env = os.environ.get
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.mysql",  # the stock backend: autopool.install() pools it
        "NAME": _env("EXAMPLE_DB_NAME") or "autopool_example",
        "HOST": _env("AUTOPOOL_TEST_MYSQL_HOST") or "127.0.0.1",
        "PORT": _env("AUTOPOOL_TEST_MYSQL_PORT") or "3306",
        "USER": _env("AUTOPOOL_TEST_MYSQL_USER") or "root",
        "PASSWORD": _env("AUTOPOOL_TEST_MYSQL_PASSWORD") or "",
        "CONN_MAX_AGE": None if MODE == "persistent" else 0,
        "OPTIONS": {},
    }
}
if MODE == "autopool":
    POOL = {"pool_size": 10, "max_overflow": 0, "timeout": 30}
    if _env("EXAMPLE_POOL_SIZE"):
        POOL["pool_size"] = int(_env("EXAMPLE_POOL_SIZE"))
    if _env("EXAMPLE_POOL_OPTIONS"):
        POOL.update(json.loads(_env("EXAMPLE_POOL_OPTIONS")))
    DATABASES["default"]["POOL"] = POOL

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"autopool": {"handlers": ["console"], "level": _env("EXAMPLE_AUTOPOOL_LOG", "WARNING")}},
}
