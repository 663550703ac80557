"""The three presets of django-db-conn-pool, with the seed's values.

Use one by name (``"POOL": "fast_and_sane"``), with overrides
(``"POOL": {"preset": "fast_and_sane", "pool_size": 20}``), or import the dict.
"""

from __future__ import annotations

from typing import Any

# Daily traffic on long-lived connections, a Django-level ping before each
# checkout, a rollback on every return, no overflow: safe against a flaky
# network or a short server wait_timeout, at one extra round trip per checkout
# and return.
SLOW_AND_SAFE: dict[str, Any] = {
    "django_pool_class": "autopool.pool.QueuePool",
    "django_pre_ping": True,
    "django_reset_on_return": False,
    "pool_size": 5,
    "max_overflow": 0,
    "timeout": 30,
    "recycle": 120,
    "dialect": None,
    "pre_ping": False,
    "use_threadlocal": True,
    "reset_on_return": "rollback",
}

# Long-lived connections, bursts absorbed by up to 10 overflow connections that
# are closed on return, a rollback only when a transaction may be open.
FAST_AND_SANE: dict[str, Any] = {
    "django_pool_class": "autopool.pool.QueuePool",
    "django_pre_ping": False,
    "django_reset_on_return": True,
    "pool_size": 5,
    "max_overflow": 10,
    "timeout": 30,
    "recycle": 3600,
    "dialect": None,
    "pre_ping": False,
    "use_threadlocal": False,
    "reset_on_return": None,
}

# The elastic pool: a burst may open up to 30 connections, which stay pooled
# and are retired one every 5 seconds once idle, down to a core of 5.
FAST_AND_WILD: dict[str, Any] = {
    "django_pool_class": "autopool.pool.DjangoQueuePool",
    "django_pre_ping": False,
    "django_reset_on_return": True,
    "django_core_pool_size": 5,
    "django_unload_timeout": 2,
    "django_retire_interval": 5,
    "django_retire_quantity": 1,
    "pool_size": 30,
    "max_overflow": 0,
    "timeout": 30,
    "recycle": 3600,
    "dialect": None,
    "pre_ping": False,
    "use_threadlocal": False,
    "reset_on_return": None,
}

PRESETS: dict[str, dict[str, Any]] = {
    "slow_and_safe": SLOW_AND_SAFE,
    "fast_and_sane": FAST_AND_SANE,
    "fast_and_wild": FAST_AND_WILD,
}
