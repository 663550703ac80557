"""Django system checks for pooled ``DATABASES`` aliases (``manage.py check``).

Registered by ``autopool.apps.AutopoolConfig`` under the tag ``autopool``:

* ``autopool.E001`` a ``POOL`` setting that ``autopool.config.parse`` rejects;
* ``autopool.W001`` ``POOL`` is set but ``autopool.install()`` was not called
  in this process, so the alias is not pooled here;
* ``autopool.W002`` ``CONN_MAX_AGE != 0`` on a pooled alias;
* ``autopool.W003`` ``POOL`` on a backend autopool does not patch;
* ``autopool.I001`` ``AUTOPOOL_ENABLED`` turns pooling off while ``POOL`` is set.

They read settings only: no connection is opened. Messages name the alias and
the option, never a connection parameter such as the password.
"""
from __future__ import annotations

import os
from typing import Any, List, Mapping, Optional

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import config as config_mod

TAG = "autopool"
MYSQL_ENGINE = "django.db.backends.mysql"

INSTALL_HINT = (
    "Call `import autopool; autopool.install()` in every entry point before Django loads the "
    "database backend: at the top of manage.py, of wsgi.py/asgi.py (before "
    "get_wsgi_application()) and of the Celery app module (celery.py). Silence with "
    "SILENCED_SYSTEM_CHECKS = ['autopool.W001'] if this process is meant to run unpooled."
)


def check_pools(app_configs: Any = None, **kwargs: Any) -> List[checks.CheckMessage]:
    """The registered check: reads ``settings.DATABASES``."""
    from django.conf import settings

    from .patch import is_installed

    return check_databases(settings.DATABASES, installed=is_installed(), enabled=config_mod.enabled())


def check_databases(databases: Mapping[str, Mapping[str, Any]], *, installed: bool,
                    enabled: bool) -> List[checks.CheckMessage]:
    """The check on an explicit ``DATABASES`` mapping (for tests and tooling)."""
    messages: List[checks.CheckMessage] = []
    pooled = [alias for alias, db in databases.items() if db.get("POOL") is not None]
    poolable: List[str] = []  # pooled aliases on a backend autopool patches
    for alias in pooled:
        db = databases[alias]
        obj = f"DATABASES[{alias!r}]"
        try:
            config_mod.parse(alias, db["POOL"])
        except ImproperlyConfigured as exc:
            messages.append(checks.Error(str(exc), obj=obj, id="autopool.E001",
                                         hint="See the POOL option table in autopool's README."))
        except Exception as exc:  # noqa: BLE001 - e.g. a pool class whose import fails oddly
            messages.append(checks.Error(
                f"DATABASES[{alias!r}]['POOL'] could not be parsed: {type(exc).__name__}: {exc}",
                obj=obj, id="autopool.E001"))
        engine_msg = _engine_problem(alias, db.get("ENGINE"))
        if engine_msg:
            messages.append(checks.Warning(engine_msg, obj=obj, id="autopool.W003",
                                           hint="Remove POOL from this alias or use the stock "
                                                f"{MYSQL_ENGINE} backend."))
            continue
        poolable.append(alias)
        if not enabled:
            continue
        max_age = db.get("CONN_MAX_AGE", 0)
        if max_age != 0:
            messages.append(checks.Warning(
                f"DATABASES[{alias!r}] sets CONN_MAX_AGE={max_age!r} on a pooled alias: Django then "
                "keeps the connection it checked out of the pool in its per-thread (per-greenlet under "
                "gevent) connection object between requests instead of returning it, so every thread "
                "or greenlet sits on a pooled connection: the pool cannot share them, runs dry and "
                "makes other requests wait (PoolTimeout), and greenlets that end leak theirs.",
                obj=obj, id="autopool.W002",
                hint="Set CONN_MAX_AGE to 0 (the default): the pool keeps connections open; Django "
                     "only returns them at the end of each request."))
    if not poolable:
        return messages
    if not enabled:
        messages.append(checks.Info(
            f"autopool is disabled by {_enabled_source()}: the POOL setting of "
            f"{', '.join(repr(a) for a in poolable)} is ignored and every connection is Django's own.",
            id="autopool.I001",
            hint="Unset AUTOPOOL_ENABLED (or set it to a true value) to pool these aliases."))
    elif not installed:
        messages.append(checks.Warning(
            f"DATABASES alias(es) {', '.join(repr(a) for a in poolable)} have a POOL setting, but "
            "autopool.install() was not called in this process, so they are not pooled here.",
            id="autopool.W001", hint=INSTALL_HINT))
    return messages


def _enabled_source() -> str:
    if os.environ.get("AUTOPOOL_ENABLED") is not None:
        return "the AUTOPOOL_ENABLED environment variable"
    return "settings.AUTOPOOL_ENABLED"


def _engine_problem(alias: str, engine: Optional[str]) -> Optional[str]:
    """Why ``POOL`` has no effect with this ENGINE, or None if it does."""
    if engine == MYSQL_ENGINE:
        return None
    if not engine:
        return f"DATABASES[{alias!r}] has a POOL setting but no ENGINE."
    from django.utils.module_loading import import_string

    try:
        wrapper = import_string(f"{engine}.base.DatabaseWrapper")
    except Exception:  # noqa: BLE001 - a backend that fails to import is Django's error to report
        return None
    try:
        from django.db.backends.mysql.base import DatabaseWrapper as MySQLWrapper
    except Exception:  # noqa: BLE001 - no MySQL driver: this backend cannot be MySQL's
        MySQLWrapper = None
    if MySQLWrapper is not None and isinstance(wrapper, type) and issubclass(wrapper, MySQLWrapper):
        return None
    return (f"DATABASES[{alias!r}] has a POOL setting, but autopool only pools "
            f"{MYSQL_ENGINE} (and backends subclassing its DatabaseWrapper); ENGINE "
            f"{engine!r} ignores it.")
