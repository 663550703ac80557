"""Registration of the hooks: ``install()`` / ``uninstall()``.

Patch definitions live in ``hooks``; this module only applies and removes
them, with wrapt, whether Django's MySQL backend is imported before or after
``install()``. Two groups wait until they are needed, so that projects without
them call through none: Django's error path (a multi-host pool exists) and
transaction mode's per-request hooks (a wrapper entered that mode). Every
patch is recorded with what it replaced so that ``uninstall()`` restores the
stock class attribute by identity.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import wrapt

from . import hooks, housekeeping, registry

TARGET_MODULE = "django.db.backends.mysql.base"

# (attribute of DatabaseWrapper, wrapper). Attributes that Django does not
# define (older versions) are skipped.
PATCHES: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("get_new_connection", hooks.get_new_connection),
    ("init_connection_state", hooks.init_connection_state),
    ("_set_autocommit", hooks.set_autocommit),
    ("close", hooks.close),
    ("close_if_health_check_failed", hooks.close_if_health_check_failed),
    ("_close", hooks.close_dbapi_connection),
)

# Django's error path: (module, class, attribute, wrapper). Applied only while
# a multi-host pool exists (``enable_error_hook``, which the registry calls), so
# single-host aliases pay nothing per query; removed by ``uninstall()``.
ERROR_PATCHES: tuple[tuple[str, str, str, Callable[..., Any]], ...] = (
    ("django.db.utils", "DatabaseErrorWrapper", "__exit__", hooks.database_error_exit),
)

_lock = threading.RLock()
_installed = False
_hook_registered = False
# (class, attribute, had its own attribute, original value)
_applied: list[tuple[type, str, bool, Any]] = []
_error_applied: list[tuple[type, str, bool, Any]] = []
_mode_applied: list[tuple[type, str, bool, Any]] = []


def _wrap(cls: type, name: str, wrapper: Callable[..., Any], applied: list[tuple[type, str, bool, Any]]) -> None:
    """Wrap ``cls.name`` with wrapt, recording in ``applied`` what ``_restore`` puts back."""
    own = name in cls.__dict__
    original = cls.__dict__[name] if own else None
    wrapt.wrap_function_wrapper(cls, name, wrapper)
    applied.append((cls, name, own, original))


def _restore(applied: list[tuple[type, str, bool, Any]]) -> None:
    for cls, name, own, original in reversed(applied):
        if own:
            setattr(cls, name, original)
        else:
            delattr(cls, name)
    applied.clear()


def _apply(module: Any) -> None:
    with _lock:
        if not _installed or _applied:
            return
        cls = module.DatabaseWrapper
        for name, wrapper in PATCHES:
            if hasattr(cls, name):
                _wrap(cls, name, wrapper, _applied)
        # pool_mode="transaction" (txmode.py): applied after, so around the
        # hooks above; each returns at once for a wrapper in request mode.
        # Imported here: txmode imports Django's backend utilities, which
        # ``import autopool`` in a settings module must not pull in.
        from . import txmode

        for name, wrapper in txmode.PATCHES:
            if hasattr(cls, name):
                _wrap(cls, name, wrapper, _applied)
        txmode.on_transaction_mode(enable_transaction_mode_hooks)
        _connect_signals()


def enable_transaction_mode_hooks() -> None:
    """Apply transaction mode's per-request hooks (``txmode.MODE_PATCHES``), around
    the others; idempotent, and only while installed. txmode calls it each time a
    wrapper enters transaction mode, before that wrapper's ``connect()`` returns."""
    if _mode_applied:  # the common case: no lock
        return
    with _lock:
        if not _installed or not _applied or _mode_applied:
            return
        from . import txmode

        cls = _applied[0][0]  # the DatabaseWrapper _apply() patched
        for name, wrapper in txmode.MODE_PATCHES:
            if hasattr(cls, name):
                _wrap(cls, name, wrapper, _mode_applied)


def _connect_signals() -> None:
    from django.test.signals import setting_changed

    setting_changed.connect(hooks.reset_enabled_cache, dispatch_uid="autopool-enabled")


def install() -> None:
    """Pool every ``DATABASES`` alias that has a ``POOL`` (idempotent)."""
    global _installed, _hook_registered
    with _lock:
        if _installed:
            return
        _installed = True
        hooks.reset_enabled_cache()
        if not _hook_registered:
            # Fires now if the backend is already imported, else on import.
            wrapt.register_post_import_hook(_apply, TARGET_MODULE)
            _hook_registered = True
        else:
            import sys

            module = sys.modules.get(TARGET_MODULE)
            if module is not None:
                _apply(module)


def uninstall() -> None:
    """Restore the stock backend exactly and dispose every pool (idempotent)."""
    global _installed
    with _lock:
        if not _installed:
            return
        _installed = False
        _restore(_mode_applied)  # they wrap the ones below
        _restore(_applied)
        _restore(_error_applied)
    registry.dispose()
    housekeeping.stop()


def enable_error_hook() -> None:
    """Apply ``ERROR_PATCHES`` (idempotent; only while installed)."""
    import importlib

    with _lock:
        if not _installed or _error_applied:
            return
        for module_name, class_name, name, wrapper in ERROR_PATCHES:
            _wrap(getattr(importlib.import_module(module_name), class_name), name, wrapper, _error_applied)


# The registry calls it for each multi-host pool it creates: it never imports this module.
registry.on_multi_host_pool(enable_error_hook)


def is_installed() -> bool:
    """True once ``install()`` was called (and not undone)."""
    return _installed


def is_applied() -> bool:
    """True when the backend class is currently patched."""
    return bool(_applied)
