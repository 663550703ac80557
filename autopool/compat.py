"""Converting settings written for other Django MySQL pools."""

from __future__ import annotations

import copy
from typing import Any

_DJ_DB_CONN_POOL_ENGINES = {
    "dj_db_conn_pool.backends.mysql": "django.db.backends.mysql",
}
# django-db-connection-pool's POOL_OPTIONS keys (upper case) -> autopool's
_DJ_DB_CONN_POOL_KEYS = {
    "POOL_SIZE": "pool_size",
    "MAX_OVERFLOW": "max_overflow",
    "RECYCLE": "recycle",
    "TIMEOUT": "timeout",
    "PRE_PING": "pre_ping",
    "ECHO": "echo",
    "RESET_ON_RETURN": "reset_on_return",
    "USE_LIFO": "use_lifo",
}
_SEED_ENGINES = {"django_db_conn_pool.mysqlalchemy": "django.db.backends.mysql"}


def from_dj_db_conn_pool(databases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return a copy of ``DATABASES`` written for django-db-connection-pool
    (``dj_db_conn_pool.backends.mysql`` + ``POOL_OPTIONS``) or for
    django-db-conn-pool (``django_db_conn_pool.mysqlalchemy`` + ``POOL``), using
    the stock ENGINE and autopool's ``POOL``. Other aliases are copied as is."""
    out = {}
    for alias, entry in databases.items():
        entry = copy.deepcopy(entry)
        engine = entry.get("ENGINE", "")
        if engine in _DJ_DB_CONN_POOL_ENGINES:
            entry["ENGINE"] = _DJ_DB_CONN_POOL_ENGINES[engine]
            options = entry.pop("POOL_OPTIONS", {}) or {}
            pool = {}
            for key, value in options.items():
                if key not in _DJ_DB_CONN_POOL_KEYS:
                    from django.core.exceptions import ImproperlyConfigured

                    raise ImproperlyConfigured(
                        f"DATABASES[{alias!r}]['POOL_OPTIONS'][{key!r}] has no autopool equivalent; "
                        f"valid keys: {', '.join(_DJ_DB_CONN_POOL_KEYS)}"
                    )
                pool[_DJ_DB_CONN_POOL_KEYS[key]] = value
            entry["POOL"] = pool
        elif engine in _SEED_ENGINES:
            entry["ENGINE"] = _SEED_ENGINES[engine]
            entry.setdefault("POOL", {})
        out[alias] = entry
    return out
