"""The one after-fork handler: a forked child gets fresh per-process state and never touches the parent's sessions.

A child made by ``fork()`` (multiprocessing, a Celery prefork child, a
gunicorn or uWSGI worker of a preloaded app) shares every socket of its
parent. Whatever the child does with the copies of autopool's connections
reaches the parent's server sessions: mysqlclient's deallocation calls
``mysql_close()``, which sends ``COM_QUIT`` (at garbage collection, at
interpreter teardown, on ``sys.exit``); a rollback on return would even read
a reply meant for the parent. Keeping the objects referenced does not help:
teardown frees them anyway. So, before anything in the child can free or use
them, :func:`after_in_child` points the child's copy of each connection's
file descriptor at ``/dev/null`` (``os.dup2``). Whatever happens to those
objects afterwards writes only there, and the child simply forgets them.

Then it resets, in order, every piece of per-process state:

1. the connections: file descriptors on ``/dev/null``, cooperative (gevent)
   read watchers dropped;
2. Django wrappers holding a connection at fork time: outside
   ``atomic()`` the wrapper forgets it, so its next query connects through
   the child's own pool; inside ``atomic()`` the transaction is the
   parent's, so the block is marked for rollback (Django refuses further
   queries in it, and nothing is ever committed) and the wrapper connects
   afresh once the block ends;
3. the registry: its pools are forgotten, the next checkout builds new ones;
4. housekeeping: a fresh task on demand (an inherited gevent task is told to stop);
5. the replica monitor: the next ``routers.monitor()`` builds the child's own,
   with its own connections, registered with the child's housekeeping.

Before the fork, the module locks of registry, housekeeping and routers, and
each pool's lock, are taken, so no other thread is in the middle of changing
that state when the process is copied (a lock held by a thread that does not
exist in the child would stay held there forever): each holder's
``lock_for_fork()``, and ``release_after_fork()`` in the parent and the
child; the child then gives the pools and modules fresh locks. The
connections checked out at that moment (their pool records' fairies) are
held across the fork: in the child, CPython frees other threads'
thread-local data (Django's connections) *before* any after-fork handler
runs, and a fairy freed then would return its connection to the pool, which
closes it on the parent's socket.

Only modules already imported are reset (looked up in ``sys.modules``): a
module never imported has no state, and this module imports none of them.

Not every fork runs Python's at-fork handlers: uWSGI (an app loaded in the
master, no ``--lazy-apps``) forks its workers with C's ``fork()`` and runs
them only with ``--py-call-osafterfork``. So the same handler also runs
lazily: ``hooks`` compares ``os.getpid()`` with :data:`pid` at each checkout
and each close of a leased connection (the first thing a worker does with a
connection its Django wrapper held at the fork: at request start Django
closes a connection that outlived ``CONN_MAX_AGE``, 0 on a pooled alias), as
:func:`before` does, and calls :func:`after_in_child` on a mismatch, before
anything inherited is used. It runs once per process, whichever comes first.
A query straight on such a wrapper's connection before any close (a uWSGI
``postfork`` hook) is not seen: no hook runs there. Nothing was held before such a
fork, and no other thread's data was freed: the checkouts still exist
(``_checked_out()`` finds them), and the pools' locks, which a thread of the
parent may have held at that moment, are replaced before the checkouts
leave their pools.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import event

logger = logging.getLogger("autopool")

# Seconds the before-fork step waits for a lock held by another thread. No I/O happens under these
# locks, so they are held for microseconds; the bound only keeps a misuse (fork() called from inside
# one of them) from hanging the fork: past it the fork goes ahead without that lock.
LOCK_TIMEOUT = 5.0

_track_lock = threading.Lock()
# Every DB-API connection autopool opened in this process (pools, multi-host probes, the replica
# monitor) and every pool record: what a child must neutralize and what a fork must hold.
_connections: weakref.WeakSet[Any] = weakref.WeakSet()
_records: weakref.WeakSet[Any] = weakref.WeakSet()
# Between before() and the after-fork handlers: the locks taken (their release), the fairies held.
_acquired: list[Callable[[], None]] = []
_held: list[Any] = []
# The process this module's (and the other modules') per-process state belongs to. ``hooks`` compares
# it with os.getpid() (~0.1 us) to catch a fork that ran no at-fork handler; after_in_child() sets it.
pid = os.getpid()
# Taken by after_in_child(): in a child forked without the handlers, the first threads to check out
# may find the pid changed together; one resets, the others wait for it.
_reset_lock = threading.Lock()


# -- tracking (once per physical connection, never per checkout) -------------------------------------
def track(conn: Any) -> Any:
    """Remember a DB-API connection this process opened; returns it."""
    with _track_lock:
        _connections.add(conn)
    return conn


def tracking(connect: Callable[..., Any]) -> Callable[..., Any]:
    """``connect`` whose every connection is tracked (a pool's creator, a multi-host connect)."""

    def tracked_connect(*args: Any) -> Any:
        return track(connect(*args))

    return tracked_connect


def _on_connect(dbapi_connection: Any, record: Any) -> None:
    with _track_lock:
        _records.add(record)


def track_pool(pool: Any) -> None:
    """Remember ``pool``'s records, whose checked-out fairies a fork holds (any SQLAlchemy pool)."""
    event.listen(pool, "connect", _on_connect)


# -- the handlers ------------------------------------------------------------------------------------
def _module(name: str) -> Any:
    return sys.modules.get(f"{__package__}.{name}")


class ForkLocked(Protocol):
    """Per-process state kept under a lock: the registry, housekeeping and routers modules, each pool."""

    def lock_for_fork(self, timeout: float) -> bool: ...

    def release_after_fork(self) -> None: ...


class _TrackLock:
    # This module's own lock, under the same protocol.
    def lock_for_fork(self, timeout: float) -> bool:
        return _track_lock.acquire(timeout=timeout)

    def release_after_fork(self) -> None:
        _track_lock.release()


def _locked() -> list[ForkLocked]:
    """What guards per-process state, in the order the code takes the locks."""
    # routers.monitor() registers with housekeeping under its lock.
    modules = [_module(name) for name in ("routers", "registry", "housekeeping")]
    locked: list[ForkLocked] = [module for module in modules if module is not None]
    locked.append(_TrackLock())
    registry = _module("registry")
    if registry is not None:
        # autopool's QueuePool keeps its bookkeeping under one lock (no I/O under it); another pool
        # class has no lock_for_fork().
        locked.extend(entry.pool for entry in registry.entries() if hasattr(entry.pool, "lock_for_fork"))
    return locked


def before() -> None:
    if pid != os.getpid():
        # This process was itself forked without the handlers and has not reset yet (a uWSGI worker
        # forking before its first checkout): its state first, or its child would get the locks and
        # checkouts of a process gone (the grandparent's threads).
        after_in_child()
    for holder in _locked():
        if holder.lock_for_fork(LOCK_TIMEOUT):
            _acquired.append(holder.release_after_fork)
        else:
            logger.warning("fork(): a lock of autopool stayed held for %s s; forking without it", LOCK_TIMEOUT)
    _held.extend(_checked_out())


def _checked_out() -> list[Any]:
    """The fairies of the records checked out now."""
    fairies = []
    for record in list(_records):
        ref = record.fairy_ref
        fairy = ref() if ref is not None else None
        if fairy is not None:
            fairies.append(fairy)
    return fairies


def after_in_parent() -> None:
    # Locks first: a fairy whose wrapper died meanwhile returns to its pool when let go, under its lock.
    _release_acquired()
    _held.clear()


def _release_acquired() -> None:
    while _acquired:
        _acquired.pop()()


def after_in_child() -> None:
    """Give this process its own state if it is a forked child whose state was not reset yet.

    Registered with ``os.register_at_fork`` and called by ``hooks`` when ``os.getpid()`` is not
    :data:`pid` (a fork that ran no at-fork handler); runs once per process, a no-op afterwards.
    """
    global pid
    current = os.getpid()
    if pid == current:
        return
    # At-fork handler: this, the child's only thread, took these in before(). After a fork that ran
    # no handler, nothing was taken.
    _release_acquired()
    locked = _reset_lock.acquire(timeout=LOCK_TIMEOUT)
    if not locked:
        # Held at fork time by a thread of the parent that does not exist here.
        logger.warning("fork(): autopool's reset lock stayed held for %s s; resetting without it", LOCK_TIMEOUT)
    try:
        if pid != current:
            _reset()
            pid = current
    finally:
        if locked:
            _reset_lock.release()


def _reset() -> None:
    global _track_lock, _connections, _records
    # Also what is checked out now: a C-level fork (an embedding server) skipped before().
    held = list({id(f): f for f in [*_held, *_checked_out()]}.values())
    _held.clear()
    _track_lock = threading.Lock()
    connections, _connections, _records = list(_connections), weakref.WeakSet(), weakref.WeakSet()
    # First, before anything can close or free an inherited connection.
    _step(neutralize, connections)
    # The held fairies leave their pools below, under each pool's lock: released by the at-fork path,
    # maybe held by a vanished thread of the parent after a fork that skipped before(). The pools are
    # the parent's and forgotten next: fresh locks are safe.
    _step(_fresh_pool_locks)
    _step(_forget_checkouts, held)
    for name, reset in (
        ("registry", "forget_after_fork"),
        ("housekeeping", "reset_after_fork"),
        ("routers", "reset_after_fork"),
    ):
        module = _module(name)
        if module is not None:
            _step(getattr(module, reset))
    # The held fairies go now; their connections, detached from the pools, write only to /dev/null.
    del held


def _fresh_pool_locks() -> None:
    registry = _module("registry")
    if registry is None:
        return
    for entry in registry.entries():
        if hasattr(entry.pool, "after_fork_in_child"):
            entry.pool.after_fork_in_child()


def _step(func: Callable[..., Any], *args: Any) -> None:
    # One failing step must not skip the others: each protects the parent's sessions on its own.
    try:
        func(*args)
    except Exception:  # noqa: BLE001 - logged; an exception here would only be printed and ignored
        logger.exception("autopool: after-fork step %s failed", func.__name__)


# -- the child's steps ---------------------------------------------------------------------------------
def fileno(conn: Any) -> int | None:
    """The socket's file descriptor of an open mysqlclient or PyMySQL connection, else None."""
    try:
        sock = getattr(conn, "_sock", None)  # PyMySQL (None once closed)
        if sock is not None:
            fd = sock.fileno()
        elif hasattr(conn, "_sock") or not getattr(conn, "open", True):
            return None
        else:
            fd = conn.fileno()  # mysqlclient
    except Exception:  # noqa: BLE001 - a closed connection has no descriptor to protect
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def neutralize(connections: list[Any]) -> int:
    """Point each connection's descriptor at /dev/null (in this process only); return how many."""
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    count = 0
    try:
        for conn in connections:
            fd = fileno(conn)
            if fd is None or fd == devnull:
                continue
            os.dup2(devnull, fd, inheritable=False)
            count += 1
            gevent_support = _module("gevent")
            if gevent_support is not None:
                gevent_support.forget_watcher(conn)
    finally:
        os.close(devnull)
    return count


def _forget_checkouts(fairies: list[Any]) -> None:
    """Connections checked out at fork time leave their wrappers and their (forgotten) pools."""
    if not fairies:
        return
    hooks = _module("hooks")
    leases = _module("leases") or _module("pool")  # the lease marks' names (see leases.py)
    held = {id(f): f for f in fairies}
    kept = set()
    if hooks is not None:
        for wrapper in _wrappers_of(fairies, leases):
            fairy = wrapper.__dict__.get(hooks.FAIRY)
            if fairy is None or id(fairy) not in held:
                continue
            if wrapper.in_atomic_block:
                # The parent's transaction: Django refuses further queries in the block and rolls
                # back (on /dev/null) when it ends; hooks' inherited branch then drops the lease.
                wrapper.needs_rollback = True
                kept.add(id(fairy))
                continue
            for key in (hooks.FAIRY, hooks.CHECKED_OUT_BY, hooks.REUSED, hooks.HOLDER):
                wrapper.__dict__.pop(key, None)
            wrapper.connection = None  # the next query connects through the child's own pool
    for fairy in fairies:
        record = fairy._connection_record
        if record is not None and leases is not None:
            record.__dict__.pop(leases.LEASED_ATTR, None)  # not a leak: nothing to report or close
        if id(fairy) not in kept:
            # SQLAlchemy's public detach(): the record lets go of the connection and no reset or
            # return happens when the fairy goes; the connection itself is freed with it (on /dev/null).
            fairy.detach()


def _wrappers_of(fairies: list[Any], leases: Any) -> list[Any]:
    """The Django wrappers holding ``fairies``: through each checkout's lease, and this thread's own."""
    wrappers = []
    for fairy in fairies:
        owner = fairy.__dict__.get(leases.FAIRY_OWNER_ATTR) if leases is not None else None
        lease = owner() if owner is not None else None
        ref = getattr(lease, "wrapper", None)
        wrapper = ref() if ref is not None else None
        if wrapper is not None:
            wrappers.append(wrapper)
    if "django.db" in sys.modules:
        from django.db import connections

        wrappers.extend(connections.all(initialized_only=True))
    return wrappers


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=before, after_in_parent=after_in_parent, after_in_child=after_in_child)
