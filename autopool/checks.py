"""Django system checks for pooled ``DATABASES`` aliases (``manage.py check``).

Registered by ``autopool.apps.AutopoolConfig`` under the tag ``autopool``:

* ``autopool.E001`` a ``POOL`` setting that ``autopool.config.parse`` rejects
  (callable options are called once and their result checked), or a
  ``dialect`` naming another driver than the one Django's backend uses;
* ``autopool.W001`` ``POOL`` is set but ``autopool.install()`` was not called
  in this process, so the alias is not pooled here;
* ``autopool.W002`` ``CONN_MAX_AGE != 0`` on a pooled alias;
* ``autopool.W003`` ``POOL`` on a backend autopool does not patch;
* ``autopool.W004`` (``autopool.advice.check_leftovers``) a ``POOL_OPTIONS``
  key left from django-db-connection-pool on another ENGINE;
* ``autopool.I001`` ``AUTOPOOL_ENABLED`` turns pooling off while ``POOL`` is set;
* ``autopool.E010`` a multi-host alias (``POOL["hosts"]``) without
  ``connect_timeout`` and ``read_timeout`` in ``OPTIONS``;
* ``autopool.E011`` ``replica_of`` naming no ``DATABASES`` alias.
* ``autopool.W020`` (``check_asgi``) an ASGI project (``ASGI_APPLICATION`` set)
  with ``CONN_MAX_AGE != 0`` and no ``POOL`` on a MySQL alias.

They read settings only: no connection is opened. The fleet-sizing check
(``check_fleet``) does connect, so it does nothing unless Django asks for
database checks (``manage.py check --database default``, ``migrate``, the
test runner): ``autopool.W010`` when ``AUTOPOOL_PROCESSES`` processes
(environment or setting, default 1) do not fit in a server's free
``max_connections``, counting every host of every pooled alias;
``autopool.W011`` when a host cannot be queried. Messages name the alias and
the option, never a connection parameter such as the password.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import config as config_mod

TAG = "autopool"
MYSQL_ENGINE = "django.db.backends.mysql"

INSTALL_HINT = (
    "The autopool app calls autopool.install() unless AUTOPOOL_AUTO_INSTALL = False: remove that "
    "setting, or call `import autopool; autopool.install()` in every entry point (manage.py, "
    "wsgi.py/asgi.py, the Celery app module celery.py) before its first query. Silence with "
    "SILENCED_SYSTEM_CHECKS = ['autopool.W001'] if this process is meant to run unpooled."
)


def check_pools(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The registered check: reads ``settings.DATABASES``."""
    from django.conf import settings

    from .patch import is_installed

    return check_databases(settings.DATABASES, installed=is_installed(), enabled=config_mod.enabled())


def check_databases(
    databases: Mapping[str, Mapping[str, Any]], *, installed: bool, enabled: bool
) -> list[checks.CheckMessage]:
    """The check on an explicit ``DATABASES`` mapping (for tests and tooling)."""
    messages: list[checks.CheckMessage] = []
    pooled = [alias for alias, db in databases.items() if db.get("POOL") is not None]
    poolable: list[str] = []  # pooled aliases on a backend autopool patches
    for alias in pooled:
        db = databases[alias]
        obj = f"DATABASES[{alias!r}]"
        try:
            config_mod.parse(alias, db["POOL"])
        except ImproperlyConfigured as exc:
            messages.append(
                checks.Error(
                    str(exc),
                    obj=obj,
                    id="autopool.E001",
                    hint="See the POOL option table in autopool's documentation (docs/options.rst).",
                )
            )
        except Exception as exc:  # noqa: BLE001 - e.g. a pool class whose import fails oddly
            messages.append(
                checks.Error(
                    f"DATABASES[{alias!r}]['POOL'] could not be parsed: {type(exc).__name__}: {exc}",
                    obj=obj,
                    id="autopool.E001",
                )
            )
        else:
            messages.extend(_cluster_problems(alias, db, databases))
            messages.extend(_dialect_problem(alias, db))
        engine_msg = _engine_problem(alias, db.get("ENGINE"))
        if engine_msg:
            messages.append(
                checks.Warning(
                    engine_msg,
                    obj=obj,
                    id="autopool.W003",
                    hint=f"Remove POOL from this alias or use the stock {MYSQL_ENGINE} backend.",
                )
            )
            continue
        poolable.append(alias)
        if not enabled:
            continue
        max_age = db.get("CONN_MAX_AGE", 0)
        if max_age != 0:
            messages.append(
                checks.Warning(
                    f"DATABASES[{alias!r}] sets CONN_MAX_AGE={max_age!r} on a pooled alias: Django then "
                    "keeps the connection it checked out of the pool in its per-thread (per-greenlet under "
                    "gevent) connection object between requests instead of returning it, so every thread "
                    "or greenlet sits on a pooled connection: the pool cannot share them, runs dry and "
                    "makes other requests wait (PoolTimeout), and greenlets that end leak theirs.",
                    obj=obj,
                    id="autopool.W002",
                    hint="Set CONN_MAX_AGE to 0 (the default): the pool keeps connections open; Django "
                    "only returns them at the end of each request.",
                )
            )
    if not poolable:
        return messages
    if not enabled:
        messages.append(
            checks.Info(
                f"autopool is disabled by {_enabled_source()}: the POOL setting of "
                f"{', '.join(repr(a) for a in poolable)} is ignored and every connection is Django's own.",
                id="autopool.I001",
                hint="Unset AUTOPOOL_ENABLED (or set it to a true value) to pool these aliases.",
            )
        )
    elif not installed:
        messages.append(
            checks.Warning(
                f"DATABASES alias(es) {', '.join(repr(a) for a in poolable)} have a POOL setting, but "
                "autopool.install() was not called in this process, so they are not pooled here.",
                id="autopool.W001",
                hint=INSTALL_HINT,
            )
        )
    return messages


def _enabled_source() -> str:
    if os.environ.get("AUTOPOOL_ENABLED") is not None:
        return "the AUTOPOOL_ENABLED environment variable"
    return "settings.AUTOPOOL_ENABLED"


def _engine_problem(alias: str, engine: str | None) -> str | None:
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
    return (
        f"DATABASES[{alias!r}] has a POOL setting, but autopool only pools "
        f"{MYSQL_ENGINE} (and backends subclassing its DatabaseWrapper); ENGINE "
        f"{engine!r} ignores it."
    )


def _dialect_problem(alias: str, db: Mapping[str, Any]) -> list[checks.CheckMessage]:
    """E001 for a ``dialect`` naming another driver than the one Django's MySQL backend uses."""
    cfg = config_mod.parse(alias, db["POOL"])
    if cfg.dialect is None or db.get("ENGINE") != MYSQL_ENGINE:
        return []
    try:
        from django.db.backends.mysql.base import Database
    except Exception:  # noqa: BLE001 - no MySQL driver installed: Django reports that itself
        return []
    from .drivers import for_module

    try:
        config_mod.resolve_dialect(alias, cfg.dialect, for_module(Database))
    except ImproperlyConfigured as exc:
        return [
            checks.Error(
                str(exc),
                obj=f"DATABASES[{alias!r}]",
                id="autopool.E001",
                hint="See the POOL option table in autopool's documentation (docs/options.rst).",
            )
        ]
    return []


def _cluster_problems(
    alias: str, db: Mapping[str, Any], databases: Mapping[str, Mapping[str, Any]]
) -> list[checks.CheckMessage]:
    """E010/E011 for an alias whose POOL parses."""
    cfg = config_mod.parse(alias, db["POOL"])
    obj = f"DATABASES[{alias!r}]"
    found: list[checks.CheckMessage] = []
    try:
        config_mod.check_hosts_options(alias, cfg, db.get("OPTIONS") or {})
    except ImproperlyConfigured as exc:
        found.append(
            checks.Error(str(exc), obj=obj, id="autopool.E010", hint="See autopool's documentation, docs/clusters.rst.")
        )
    if cfg.replica_of is not None and cfg.replica_of not in databases:
        found.append(
            checks.Error(
                f"DATABASES[{alias!r}]['POOL']['replica_of'] is {cfg.replica_of!r}, which is not a DATABASES "
                f"alias (aliases: {', '.join(databases)}).",
                obj=obj,
                id="autopool.E011",
            )
        )
    return found


def processes_setting() -> int:
    """``AUTOPOOL_PROCESSES`` (the environment wins over the setting): processes sharing the servers."""
    from django.conf import settings

    raw = os.environ.get("AUTOPOOL_PROCESSES", getattr(settings, "AUTOPOOL_PROCESSES", 1))
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ImproperlyConfigured(f"AUTOPOOL_PROCESSES must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ImproperlyConfigured(f"AUTOPOOL_PROCESSES must be a positive integer, got {raw!r}")
    return value


def check_fleet(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Fleet sizing against the live servers (a database check: runs only when databases are given)."""
    if not databases:
        return []
    from django.conf import settings

    from . import fleet

    if not fleet.pooled_aliases(settings.DATABASES):
        return []
    try:
        processes = processes_setting()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="autopool.E012")]
    servers, problems = fleet.survey(settings.DATABASES)
    messages: list[checks.CheckMessage] = []
    for problem in problems:
        if problem.kind is not fleet.ProblemKind.UNREACHABLE:
            continue  # a POOL that does not parse is E001's
        alias, where = problem.alias, f" ({problem.address})" if problem.address else ""
        messages.append(
            checks.Warning(
                f"DATABASES[{alias!r}]{where}: {problem.message}; its share of the server's connections is not "
                "checked.",
                obj=f"DATABASES[{alias!r}]",
                id="autopool.W011",
            )
        )
    for server in servers.values():
        info, numbers = server["info"], fleet.fit(server, processes)
        members = ", ".join(repr(m[0]) for m in server["members"])
        if numbers["unbounded"]:
            messages.append(
                checks.Warning(
                    f"{info['address']}: max_overflow=-1 on {', '.join(repr(a) for a in numbers['unbounded'])} "
                    f"lets the pool open connections without limit; it cannot be checked against "
                    f"max_connections={info['max_connections']}.",
                    id="autopool.W010",
                    hint="Set a bounded max_overflow.",
                )
            )
        elif not numbers["fits"]:
            messages.append(
                checks.Warning(
                    f"{info['address']}: {processes} process(es) x {numbers['per_process']} connections "
                    f"(pool_size + max_overflow of {members}) = {numbers['needed']} do not fit in the "
                    f"{numbers['free']} free of max_connections={info['max_connections']} "
                    f"({info['threads_connected']} in use).",
                    id="autopool.W010",
                    hint="Lower pool_size/max_overflow, run fewer processes (AUTOPOOL_PROCESSES is the number "
                    "of processes sharing these servers), or raise max_connections.",
                )
            )
    return messages


def check_asgi(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``autopool.W020``: an ASGI project (``ASGI_APPLICATION`` set) keeps persistent MySQL
    connections on an alias without ``POOL``."""
    from django.conf import settings

    if not getattr(settings, "ASGI_APPLICATION", None):
        return []
    return check_asgi_databases(settings.DATABASES)


def check_asgi_databases(databases: Mapping[str, Mapping[str, Any]]) -> list[checks.CheckMessage]:
    """W020 on an explicit ``DATABASES`` mapping of an ASGI project."""
    messages: list[checks.CheckMessage] = []
    for alias, db in databases.items():
        max_age = db.get("CONN_MAX_AGE", 0)
        if db.get("POOL") is not None or max_age == 0 or not db.get("ENGINE"):
            continue
        if _engine_problem(alias, db["ENGINE"]) is not None:
            continue  # not the MySQL backend: not autopool's to advise on
        # Under ASGI every request runs its sync code on a thread of its own, so Django's
        # per-thread persistent connections are opened per request and never reused (Django
        # ticket #33497): they pile up until the server's max_connections.
        messages.append(
            checks.Warning(
                f"DATABASES[{alias!r}] sets CONN_MAX_AGE={max_age!r} without a POOL in an ASGI project "
                "(ASGI_APPLICATION is set): under ASGI each request runs on a new thread, so persistent "
                "connections are not reused and accumulate on the database server.",
                obj=f"DATABASES[{alias!r}]",
                id="autopool.W020",
                hint="Add a POOL to this alias (e.g. {'pool_size': 10}) and set CONN_MAX_AGE to 0, or set "
                "CONN_MAX_AGE to 0 (Django's documentation for ASGI).",
            )
        )
    return messages
