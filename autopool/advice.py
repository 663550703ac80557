"""Loud, once-per-process warnings about settings that silently leave an alias unpooled.

``manage.py check`` reports these problems, but checks do not run under
gunicorn, uWSGI, uvicorn, daphne or Celery. The ``autopool`` app's ``ready()``
runs in every process that calls ``django.setup()`` (all of those, and every
management command), so it calls :func:`startup` there, and each problem
becomes a Python warning (category :class:`AutopoolWarning`) and a record on
the ``autopool`` logger at WARNING, once per process, naming the alias, the
setting and the fix. The texts are the system checks' own, prefixed with the
check ID, so the log and ``manage.py check`` say the same thing.

What is reported:

* ``autopool.W001``: ``POOL`` set but ``autopool.install()`` not called in
  this process. With the app listed this only happens when
  ``AUTOPOOL_AUTO_INSTALL = False``; it is reported at the alias's first
  connection (the entry point may call ``install()`` after ``django.setup()``).
* ``autopool.W002``: ``CONN_MAX_AGE != 0`` on a pooled alias.
* ``autopool.W003``, ``autopool.E001``, ``autopool.E010``, ``autopool.E011``:
  a ``POOL`` that cannot work (other backend, bad value, multi-host without
  timeouts, unknown primary).
* ``autopool.W004``: a ``POOL_OPTIONS`` key (django-db-connection-pool's
  setting) on an alias whose ENGINE is not that library's: nothing reads it.
* ``autopool.W020``: an ASGI project keeping persistent, unpooled MySQL
  connections (``CONN_MAX_AGE`` without ``POOL``).

Without the app in ``INSTALLED_APPS`` no autopool code runs in a process that
does not call ``install()`` itself: the app entry is the guard.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from collections.abc import Mapping
from typing import Any

from django.core import checks

logger = logging.getLogger("autopool")

AUTO_INSTALL_SETTING = "AUTOPOOL_AUTO_INSTALL"
# django-db-connection-pool's engines: with one of these, POOL_OPTIONS is that library's business.
DBCP_ENGINE_PREFIX = "dj_db_conn_pool."
MIGRATION_HINT = (
    "This is django-db-connection-pool's setting: autopool reads POOL. Convert the settings with "
    "autopool.compat.from_dj_db_conn_pool(DATABASES), or rename POOL_OPTIONS to POOL with lower-case "
    "keys (POOL_SIZE -> pool_size, ...); see 'Migrating' in autopool's documentation."
)
NOT_INSTALLED_HINT = (
    "AUTOPOOL_AUTO_INSTALL = False stops the autopool app from calling autopool.install(): remove that "
    "setting, or call `import autopool; autopool.install()` in this entry point (wsgi.py, asgi.py, "
    "manage.py, the Celery app module) before its first query."
)


class AutopoolWarning(UserWarning):
    """A configuration that leaves a pooled alias unpooled, or pooled badly."""


_lock = threading.Lock()
_reported: set[tuple[str, str]] = set()  # (check id, object): each problem once per process
_reported_pid = os.getpid()


def _first_time(key: tuple[str, str]) -> bool:
    global _reported_pid
    with _lock:
        if _reported_pid != os.getpid():  # a forked worker is a process of its own: report again
            _reported.clear()
            _reported_pid = os.getpid()
        if key in _reported:
            return False
        _reported.add(key)
        return True


def report(message: checks.CheckMessage) -> bool:
    """Warn once per process about a check message; True if it was reported now."""
    if not _first_time((message.id or "", str(message.obj))):
        return False
    text = f"{message.id}: {message.msg}"
    if message.hint:
        text += f" HINT: {message.hint}"
    logger.warning("%s", text)
    warnings.warn(text, AutopoolWarning, stacklevel=3)
    return True


def auto_install(settings: Any = None) -> bool:
    """Whether the app's ``ready()`` calls ``install()`` (``AUTOPOOL_AUTO_INSTALL``, default True)."""
    if settings is None:
        from django.conf import settings as django_settings

        settings = django_settings
    return bool(getattr(settings, AUTO_INSTALL_SETTING, True))


def check_leftovers(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``autopool.W004``: ``POOL_OPTIONS`` on an alias no installed library reads it for.

    Registered as a system check; ``databases`` is Django's argument (the aliases
    to run database checks on), unused: this check reads settings only.
    """
    from django.conf import settings

    return leftovers(settings.DATABASES)


def leftovers(databases: Mapping[str, Mapping[str, Any]]) -> list[checks.CheckMessage]:
    found: list[checks.CheckMessage] = []
    for alias, db in databases.items():
        if "POOL_OPTIONS" not in db or str(db.get("ENGINE") or "").startswith(DBCP_ENGINE_PREFIX):
            continue
        effect = (
            "POOL_OPTIONS is ignored and POOL is used"
            if db.get("POOL") is not None
            else "nothing reads it, so this alias is not pooled"
        )
        found.append(
            checks.Warning(
                f"DATABASES[{alias!r}] has POOL_OPTIONS, but its ENGINE is {db.get('ENGINE')!r}, not "
                f"django-db-connection-pool's: {effect}.",
                obj=f"DATABASES[{alias!r}]",
                id="autopool.W004",
                hint=MIGRATION_HINT,
            )
        )
    return found


def problems(
    databases: Mapping[str, Mapping[str, Any]], *, installed: bool, enabled: bool
) -> list[checks.CheckMessage]:
    """The checks' findings that deserve a runtime warning (W001 excepted: see ``watch_connections``)."""
    from .checks import check_databases

    found = [
        m
        for m in check_databases(databases, installed=installed, enabled=enabled)
        if m.level >= checks.WARNING and m.id != "autopool.W001"
    ]
    return found + leftovers(databases)


def startup() -> None:
    """Called by ``AutopoolConfig.ready()``: report every problem of ``settings.DATABASES`` once."""
    from django.conf import settings

    from . import config as config_mod
    from .patch import is_installed

    enabled = config_mod.enabled()
    if _running_check_command():
        return  # ``manage.py check`` prints these findings itself, once
    from .checks import check_asgi

    for message in problems(settings.DATABASES, installed=is_installed(), enabled=enabled) + check_asgi():
        report(message)
    if not enabled:
        pooled = [alias for alias, db in settings.DATABASES.items() if db.get("POOL") is not None]
        if pooled:
            logger.info(
                "autopool is disabled (AUTOPOOL_ENABLED): %s not pooled in this process",
                ", ".join(repr(a) for a in pooled),
            )
    elif not is_installed():
        watch_connections()


def _running_check_command() -> bool:
    """Whether this process is ``manage.py check`` / ``django-admin check``."""
    argv = sys.argv
    return (
        len(argv) > 1
        and argv[1] == "check"
        and os.path.basename(argv[0]) in ("manage.py", "django-admin", "django-admin.py", "__main__.py")
    )


def watch_connections() -> None:
    """Report ``autopool.W001`` at the first connection of a pooled alias made while
    ``install()`` has still not been called; stop listening once it has."""
    from django.db.backends.signals import connection_created

    connection_created.connect(_on_connection_created, dispatch_uid="autopool-advice")


def _on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    from django.db.backends.signals import connection_created

    from . import config as config_mod
    from .patch import is_installed

    if is_installed():
        # Installed after start-up (wsgi.py after get_wsgi_application()): nothing to report, and
        # no reason to run on every later connection.
        connection_created.disconnect(dispatch_uid="autopool-advice")
        return
    if connection.settings_dict.get("POOL") is None or not config_mod.enabled():
        return
    alias = connection.alias
    entry = _command_line()
    report(
        checks.Warning(
            f"DATABASES[{alias!r}] has a POOL setting, but autopool.install() was not called in this "
            f"process (pid {os.getpid()}, {entry or 'python'}), so it is not pooled here: each thread or "
            "greenlet opens its own server connection.",
            obj=f"DATABASES[{alias!r}]",
            id="autopool.W001",
            hint=NOT_INSTALLED_HINT,
        )
    )


def _command_line() -> str:
    """This process's command line, short: which entry point to fix."""
    argv = list(getattr(sys, "orig_argv", None) or sys.argv)  # orig_argv keeps ``-m gunicorn``
    if argv:
        argv[0] = os.path.basename(argv[0])
    line = " ".join(argv)
    return line if len(line) <= 120 else line[:117] + "..."
