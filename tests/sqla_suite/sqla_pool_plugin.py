"""pytest plugin loaded into SQLAlchemy's own test run: ``sqlalchemy.pool.QueuePool`` becomes autopool's.

Imported by pytest before SQLAlchemy's test modules are collected, so the
tests that name ``pool.QueuePool`` at collection time (parametrisations) get
the replacement too. ``AUTOPOOL_SQLA_POOL`` picks the class:

* ``QueuePool``: autopool's ``QueuePool``;
* ``DjangoQueuePool``: autopool's ``DjangoQueuePool`` with SQLAlchemy's
  defaults (5 + 10) and QueuePool's return rule instead of its own (keeping
  burst connections is DjangoQueuePool's documented difference); checkout,
  waiting, invalidation, reconnection and events are DjangoQueuePool's.

A few of SQLAlchemy's tests check the slot accounting through QueuePool's
private ``_overflow`` and ``_pool`` (its queue of idle entries).
:class:`SQLAlchemyNames` shows autopool's own counts under those names, so
those tests check autopool's accounting instead of failing on a name.
"""
from __future__ import annotations

import collections
import os
from typing import Any

from django.conf import settings

if not settings.configured:  # autopool.errors subclasses Django's OperationalError
    settings.configure()

import sqlalchemy.pool  # noqa: E402
from sqlalchemy.pool import impl  # noqa: E402

from autopool import pool as autopool_pool  # noqa: E402


class _IdleQueueView:
    """``QueuePool._pool`` as SQLAlchemy's tests use it: the idle entries."""

    def __init__(self, pool: autopool_pool.QueuePool) -> None:
        self._p = pool

    @property
    def maxsize(self) -> int:
        return self._p._pool_size

    @property
    def use_lifo(self) -> bool:
        return self._p._use_lifo

    def empty(self) -> bool:
        return not self._p._idle

    def qsize(self) -> int:
        return len(self._p._idle)

    @property
    def queue(self) -> collections.deque[Any]:
        return collections.deque(rec for rec, _ in self._p._idle)

    @queue.setter
    def queue(self, records: Any) -> None:
        # SQLAlchemy's tests drop entries from its queue without touching the
        # overflow count; the same here.
        keep = {id(rec) for rec in records}
        with self._p._lock:
            self._p._idle = collections.deque(item for item in self._p._idle if id(item[0]) in keep)


class SQLAlchemyNames:
    """SQLAlchemy's QueuePool private counters, computed from autopool's."""

    _opened: int
    _pool_size: int

    @property
    def _overflow(self) -> int:
        return self._opened - self._pool_size

    @property
    def _pool(self) -> _IdleQueueView:
        return _IdleQueueView(self)  # type: ignore[arg-type]


class QueuePool(SQLAlchemyNames, autopool_pool.QueuePool):
    pass


class QueuePoolLikeDjangoQueuePool(SQLAlchemyNames, autopool_pool.DjangoQueuePool):
    def __init__(self, creator: Any, pool_size: int = 5, max_overflow: int = 10, timeout: float = 30.0,
                 use_lifo: bool = False, **kw: Any) -> None:
        super().__init__(creator, pool_size, max_overflow, timeout, use_lifo, **kw)

    _keeps = autopool_pool.QueuePool._keeps


CLASSES = {"QueuePool": QueuePool, "DjangoQueuePool": QueuePoolLikeDjangoQueuePool}
REPLACEMENT = CLASSES[os.environ.get("AUTOPOOL_SQLA_POOL", "QueuePool")]
sqlalchemy.pool.QueuePool = REPLACEMENT  # type: ignore[misc]
impl.QueuePool = REPLACEMENT  # type: ignore[misc]
