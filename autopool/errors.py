"""Named errors raised by autopool.

They subclass Django's ``OperationalError`` so that code already handling
database outages (retry middleware, Celery autoretry_for) handles pool
exhaustion the same way, without importing autopool. :class:`PoolTimeout` is
also SQLAlchemy's ``TimeoutError``, which SQLAlchemy's ``QueuePool`` raises
in the same situation, so code written against SQLAlchemy catches it too.
"""

from __future__ import annotations

from django.db import OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError


class PoolError(OperationalError):
    """Base class of the errors raised by an autopool pool."""


class PoolTimeout(PoolError, SQLAlchemyTimeoutError):
    """No connection became available within the pool's ``timeout``."""


class TooManyWaiters(PoolError):
    """The pool is exhausted and ``max_waiting`` requests already wait for it."""


class PoolClosed(PoolError):
    """The pool was disposed while a request waited for it."""


class NoHealthyHost(PoolError):
    """Every host of a multi-host alias (``POOL["hosts"]``) failed within the pool's ``timeout``."""
