"""Who holds a checked-out connection, so the pool can take back what an ended thread or greenlet left.

A checkout made through Django carries two marks (set by ``hooks.py``): the
record's ``LEASED_ATTR`` (Django holds it; a garbage-collected wrapper that
never released it left its state unknown) and the fairy's ``FAIRY_OWNER_ATTR`` (a
weak reference to the owner, whose ``dead`` or ``is_alive()`` says whether the
connection was abandoned). The pool's scan (``QueuePool.reclaim_abandoned``)
asks :func:`take_abandoned` about each checked-out record.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.pool import base as _sa_pool_base

try:
    from greenlet import getcurrent as _getcurrent
except ImportError:  # pragma: no cover - greenlet ships with SQLAlchemy on most platforms
    _getcurrent = None

# Record attribute set while Django holds the connection (see hooks.py).
LEASED_ATTR = "_autopool_leased"
# Fairy attribute: a weak reference to the checkout's owner.
FAIRY_OWNER_ATTR = "_autopool_fairy_owner"


def current_owner() -> weakref.ref[Any]:
    """A weak reference to the running greenlet (under gevent) or thread."""
    if _getcurrent is not None:
        current = _getcurrent()
        if current.parent is not None:  # a spawned greenlet, not a thread's main one
            return weakref.ref(current)
    return weakref.ref(threading.current_thread())


def owner_dead(ref: weakref.ref[Any]) -> bool:
    owner = ref()
    if owner is None:
        return True
    dead = getattr(owner, "dead", None)
    if dead is not None:
        return bool(dead)
    return not owner.is_alive()


def take_abandoned(rec: ConnectionPoolEntry) -> bool:
    """True when ``rec``'s owner has ended: its fairy is then detached, so the
    fairy's garbage collection never checks the record in a second time, and
    the caller owns the record. False for a live owner, a checkout not made
    through Django, or a record returned meanwhile."""
    ref = rec.fairy_ref  # type: ignore[attr-defined]
    fairy = ref() if ref is not None else None
    # The owner lives on the fairy, which is created per checkout: a record
    # returned and checked out again meanwhile has a new fairy, so an old
    # owner can never condemn a new checkout.
    owner = fairy.__dict__.get(FAIRY_OWNER_ATTR) if fairy is not None else None
    if owner is None or not owner_dead(owner):
        return False
    if not _detach_fairy(rec, ref, fairy):
        return False
    rec.__dict__.pop(LEASED_ATTR, None)
    return True


def _detach_fairy(rec: Any, ref: Any, fairy: Any) -> bool:
    """Cut the link between a checked-out record and its abandoned fairy so
    that the fairy's garbage collection does nothing; False when the fairy
    was returned or collected meanwhile (the record is then not ours)."""
    if rec.fairy_ref is not ref:
        return False
    finalizer = getattr(fairy, "_finalizer", None)
    if finalizer is not None:  # SQLAlchemy 2.1: a weakref.finalize
        if finalizer.detach() is None:
            return False
    else:  # SQLAlchemy 2.0: the weakref callback acts only while rec.fairy_ref is that weakref
        _strong_refs = getattr(_sa_pool_base, "_strong_ref_connection_records", {})
        _strong_refs.pop(ref, None)
    fairy._connection_record = None
    rec.fairy_ref = None
    return True


def reclaim_hint(alias: str) -> str:
    """What to fix when a connection of ``alias`` was left checked out by a thread or greenlet that ended."""
    try:
        from django.conf import settings

        max_age = settings.DATABASES.get(alias, {}).get("CONN_MAX_AGE", 0)
    except Exception:  # noqa: BLE001 - settings unavailable: fall back to the general advice
        max_age = 0
    if max_age != 0:
        return (
            f"DATABASES[{alias!r}] sets CONN_MAX_AGE={max_age!r}: Django keeps each thread's or "
            "greenlet's connection between requests; set CONN_MAX_AGE to 0 on pooled aliases"
        )
    return "call connection.close() / close_old_connections() when work outside a request ends"
