"""Plain-dict views of the live pools, for ``autopool.stats()`` and tooling.

Reads the pools' numbers without taking their lock: a snapshot may be off by
a connection in flight, never worth slowing a checkout down for. Connection
parameters come from ``PoolEntry.params``, which never holds the password.
"""

from __future__ import annotations

import os
from typing import Any

from . import registry
from .counters import COUNTERS, WAIT_TIMES

# The keys every row has, in display order (``None`` where a pool class
# cannot tell, e.g. a foreign ``django_pool_class`` without counters).
STATE_FIELDS = (
    "alias",
    "pid",
    "driver",
    "host",
    "port",
    "database",
    "user",
    "pool_class",
    "pool_size",
    "max_overflow",
    "core_size",
    "timeout",
    "recycle",
    "max_waiting",
    "open",
    "idle",
    "checked_out",
    "overflow",
    "waiting",
    "closed",
)
FIELDS = STATE_FIELDS + COUNTERS + WAIT_TIMES


def _call(pool: Any, name: str) -> int | None:
    method = getattr(pool, name, None)
    if method is None:
        return None
    try:
        return int(method())
    except Exception:  # noqa: BLE001 - a foreign pool class must not break stats
        return None


def entry_stats(entry: registry.PoolEntry) -> dict[str, Any]:
    """The stats dict of one pool entry."""
    pool = entry.pool
    cfg = entry.config
    params = entry.params
    idle = _call(pool, "checkedin")
    checked_out = _call(pool, "checkedout")
    overflow = _call(pool, "overflow")
    core = _call(pool, "core_size")
    opened = _call(pool, "opened")
    if opened is None and idle is not None and checked_out is not None:
        opened = idle + checked_out
    row: dict[str, Any] = {
        "alias": entry.alias,
        "pid": os.getpid(),
        "driver": entry.driver.name,
        "host": params.get("host") or params.get("unix_socket"),
        "port": params.get("port"),
        "database": params.get("database"),
        "user": params.get("user"),
        "pool_class": f"{type(pool).__module__}.{type(pool).__qualname__}",
        "pool_size": cfg.pool_size,
        "max_overflow": cfg.max_overflow,
        "core_size": cfg.pool_size if core is None else core,
        "timeout": cfg.timeout,
        "recycle": cfg.recycle,
        "max_waiting": cfg.max_waiting,
        # Unlocked reads may catch a return half-way: never show negatives.
        "open": None if opened is None else max(opened, 0),
        "idle": idle,
        "checked_out": None if checked_out is None else max(checked_out, 0),
        "overflow": None if overflow is None else max(overflow, 0),
        "waiting": _call(pool, "waiting"),
        "closed": bool(getattr(pool, "closed", False)),
    }
    counters = getattr(pool, "counters", None)
    values = counters.as_dict() if counters is not None else {}
    for name in COUNTERS + WAIT_TIMES:
        row[name] = values.get(name)
    return row


def pool_stats(alias: str | None = None) -> list[dict[str, Any]]:
    """One dict per live pool of this process (of ``alias`` only if given)."""
    rows = [entry_stats(entry) for entry in registry.entries(alias)]
    rows.sort(key=lambda r: r["alias"])
    return rows
