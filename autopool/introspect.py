"""Plain-dict views of the live pools, for ``autopool.stats()`` and tooling."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from . import registry


def pool_stats(alias: Optional[str] = None) -> List[Dict[str, Any]]:
    out = []
    for entry in registry.entries(alias):
        pool = entry.pool
        cfg = entry.config
        row: Dict[str, Any] = {
            "alias": entry.alias,
            "driver": entry.driver.name,
            "host": entry.params.get("host") or entry.params.get("unix_socket"),
            "port": entry.params.get("port"),
            "database": entry.params.get("database"),
            "user": entry.params.get("user"),
            "pool_class": f"{type(pool).__module__}.{type(pool).__qualname__}",
            "pool_size": cfg.pool_size,
            "max_overflow": cfg.max_overflow,
        }
        if hasattr(pool, "checkedout"):
            row.update(
                core_size=pool.core_size() if hasattr(pool, "core_size") else cfg.pool_size,
                idle=pool.checkedin(),
                checked_out=pool.checkedout(),
                overflow=max(pool.overflow(), 0),
                waiting=pool.waiting() if hasattr(pool, "waiting") else 0,
            )
        counters = getattr(pool, "counters", None)
        if counters is not None:
            row.update(counters.as_dict())
        out.append(row)
    return out
