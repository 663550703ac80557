"""autopool: SQLAlchemy connection pools for Django's stock MySQL backend.

``import autopool; autopool.install()`` and every ``DATABASES`` alias with a
``POOL`` setting checks connections out of a pool instead of opening one per
request (or per greenlet), with ``ENGINE`` left as
``django.db.backends.mysql``.
"""

from __future__ import annotations

from typing import Any

from .errors import NoHealthyHost, PoolClosed, PoolError, PoolTimeout, TooManyWaiters
from .patch import install, is_installed, uninstall

__version__ = "0.1.0"

__all__ = [
    "install",
    "uninstall",
    "is_installed",
    "dispose",
    "stats",
    "PoolError",
    "PoolTimeout",
    "TooManyWaiters",
    "PoolClosed",
    "NoHealthyHost",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # Transaction mode's public names, imported on first use: txmode imports
    # Django's backend utilities, which a settings module must not pull in.
    if name in ("pinned", "SessionStateError"):
        from . import txmode

        return getattr(txmode, name)
    raise AttributeError(f"module 'autopool' has no attribute {name!r}")


def dispose(alias: str | None = None) -> int:
    """Close the pools of ``alias`` (every alias if None) for a graceful shutdown.

    Idle connections close now, checked-out ones when returned; a later
    checkout builds a fresh pool. Returns the number of pools closed.
    """
    from . import registry

    return registry.dispose(alias)


def stats(alias: str | None = None) -> list[dict[str, Any]]:
    """One plain dict per live pool of this process (never a password)."""
    from .introspect import pool_stats

    return pool_stats(alias)
