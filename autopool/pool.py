"""Pool classes: SQLAlchemy pools with fair, bounded waiting.

:class:`QueuePool` keeps SQLAlchemy's ``QueuePool`` options and contract
(``pool_size``, ``max_overflow``, ``timeout``, ``use_lifo``) but hands a
returned connection to the oldest waiter first, bounds the number of waiters,
and raises :class:`~autopool.errors.PoolTimeout` with the numbers that matter.
One lock guards the bookkeeping; connecting, closing and waiting all happen
outside it, so a slow server never serialises other requests.

:class:`DjangoQueuePool` is the seed library's elastic pool: connections that
a burst forced open stay pooled and are retired gradually afterwards.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, Optional, Tuple

try:
    from greenlet import getcurrent as _getcurrent
except ImportError:  # pragma: no cover - greenlet ships with SQLAlchemy on most platforms
    _getcurrent = None

try:
    from gevent._hub_local import get_hub_if_exists as _get_hub_if_exists
    from gevent._hub_local import get_hub_noargs as _get_hub
    from gevent.hub import Waiter as _HubWaiterClass
except ImportError:  # gevent is optional
    _get_hub = _get_hub_if_exists = _HubWaiterClass = None

from sqlalchemy.pool import Pool
from sqlalchemy.pool import base as _sa_pool_base
from sqlalchemy.pool.base import _ConnectionRecord

from .config import Dynamic, evaluate
from .errors import PoolClosed, PoolTimeout, TooManyWaiters
from .stats import Counters

def current_owner() -> Any:
    """A weak reference to the running greenlet (under gevent) or thread."""
    if _getcurrent is not None:
        current = _getcurrent()
        if current.parent is not None:  # a spawned greenlet, not a thread's main one
            return weakref.ref(current)
    return weakref.ref(threading.current_thread())


def _reclaim_hint(alias: str) -> str:
    from .advice import reclaim_hint  # lazy: names CONN_MAX_AGE when that setting is the cause

    return reclaim_hint(alias)


def owner_dead(ref: Any) -> bool:
    owner = ref()
    if owner is None:
        return True
    dead = getattr(owner, "dead", None)
    if dead is not None:
        return bool(dead)
    return not owner.is_alive()


def _detach_fairy(rec: _ConnectionRecord, ref: Any, fairy: Any) -> bool:
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


class _WaitExpired(Exception):
    """A preliminary wait (the elastic pool's unload timeout) ran out."""


logger = logging.getLogger("autopool")

# Record attribute with [checkout time, stack, reported] (leak detection).
_CHECKOUT_INFO = "_autopool_checkout_info"

# Seconds between two scans for connections abandoned by ended greenlets.
HOUSEKEEPING_INTERVAL = 1.0
# Least seconds between two such scans made because the pool is exhausted: an
# overloaded pool is exhausted at nearly every checkout, and a scan per
# checkout (one liveness check per checked-out connection) costs more than the
# request's own pool work.
RECLAIM_ON_EXHAUSTION_INTERVAL = 0.05

# Record attribute set while Django holds the connection (see hooks.py).
LEASED_ATTR = "_autopool_leased"
# Fairy attribute: a weak reference to the checkout's owner, whose ``dead``
# (or ``is_alive()``) says whether the connection was abandoned.
OWNER_ATTR = "_autopool_owner"

# Handed to a waiter instead of a connection: "a slot is free, open one".
_SLOT = object()


class _Waiter:
    __slots__ = ("_lock", "item")

    def __init__(self) -> None:
        # A pre-acquired lock is the cheapest one-shot event between threads.
        self._lock = threading.Lock()
        self._lock.acquire()
        self.item: Any = None

    def wait(self, timeout: Optional[float]) -> bool:
        return self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0))

    def wake(self, item: Any) -> None:
        self.item = item
        self._lock.release()


class _HubWaiter:
    """The one-shot event for a process under gevent monkey patching.

    A monkey-patched lock would do, but its acquire with a timeout builds a
    ``gevent.Timeout`` and a chain of link callbacks each time; a waiting
    checkout is the common case of an overloaded pool, so it parks on the
    hub directly: one timer, one callback.
    """

    __slots__ = ("_hub", "_waiter", "item")

    def __init__(self) -> None:
        self._hub = _get_hub()
        self._waiter = _HubWaiterClass(self._hub)
        self.item: Any = None

    def wait(self, timeout: Optional[float]) -> bool:
        if timeout is None:
            return self._waiter.get()
        timer = self._hub.loop.timer(max(timeout, 0))
        timer.start(self._waiter.switch, False)
        try:
            return self._waiter.get()
        finally:
            timer.close()

    def wake(self, item: Any) -> None:
        self.item = item
        loop = self._hub.loop
        if _get_hub_if_exists() is self._hub:
            loop.run_callback(self._waiter.switch, True)
        else:  # returned from another thread (e.g. gevent's thread pool)
            loop.run_callback_threadsafe(self._waiter.switch, True)


def _waiter_class() -> type:
    """The waiter for pools created now: on the hub when threading is gevent's."""
    if _get_hub is None:
        return _Waiter
    from gevent import monkey

    return _HubWaiter if monkey.is_module_patched("threading") else _Waiter


class QueuePool(Pool):
    """A fair, bounded queue pool.

    Keyword-only options beyond SQLAlchemy's ``QueuePool``:

    ``max_waiting`` (default ``None``: no limit)
        Checkouts allowed to wait at once; the next raises ``TooManyWaiters``.
    ``use_threadlocal`` (default ``False``)
        Prefer the idle connection the calling thread returned last.
    ``name`` (default ``None``)
        Shown in error messages and stats; autopool passes the alias.
    """

    def __init__(
        self,
        creator: Callable[..., Any],
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout: float = 30.0,
        use_lifo: bool = False,
        *,
        max_waiting: Optional[int] = None,
        use_threadlocal: bool = False,
        leak_detection_threshold: Optional[float] = None,
        name: Optional[str] = None,
        counters: Optional[Counters] = None,
        clock: Callable[[], float] = time.monotonic,
        **kw: Any,
    ) -> None:
        super().__init__(creator, **kw)
        self._pool_size = pool_size
        self._max_overflow = max_overflow
        self._timeout = timeout
        self._use_lifo = use_lifo
        self._max_waiting = max_waiting
        self._use_threadlocal = use_threadlocal
        self._leak_threshold = leak_detection_threshold
        self.name = name or "pool"
        self.counters = counters if counters is not None else Counters()
        self._clock = clock
        self._lock = threading.Lock()
        # (record, time it became idle); the left end is the oldest idle.
        self._idle: Deque[Tuple[_ConnectionRecord, float]] = deque()
        self._waiters: Deque[_Waiter] = deque()
        self._waiter_class = _waiter_class()
        self._opened = 0  # records that exist: idle, checked out, or connecting
        self._closed = False
        self._local = threading.local() if use_threadlocal else None
        # Checked-out records (an ordered set), scanned for abandoned ones
        # only when the pool is exhausted.
        self._out: Dict[_ConnectionRecord, None] = {}
        self._next_reclaim = 0.0  # time.monotonic() before which exhaustion does not scan

    # -- options SQLAlchemy's recreate() must carry --------------------------
    def _recreate_kwargs(self) -> dict:
        return dict(
            pool_size=self._pool_size, max_overflow=self._max_overflow, timeout=self._timeout,
            use_lifo=self._use_lifo, max_waiting=self._max_waiting,
            use_threadlocal=self._use_threadlocal, leak_detection_threshold=self._leak_threshold,
            name=self.name, counters=self.counters,
            clock=self._clock, recycle=self._recycle, echo=self.echo,
            logging_name=self._orig_logging_name, reset_on_return=self._reset_on_return,
            pre_ping=self._pre_ping, _dispatch=self.dispatch, dialect=self._dialect,
        )

    def recreate(self) -> "QueuePool":
        self.logger.info("Pool recreating")
        return self.__class__(self._creator, **self._recreate_kwargs())

    # -- checkout -------------------------------------------------------------
    def _take_idle(self) -> Optional[_ConnectionRecord]:
        """Pop an idle record; the caller holds the lock."""
        idle = self._idle
        if not idle:
            return None
        if self._local is not None:
            mine = getattr(self._local, "record", None)
            if mine is not None:
                for i, (rec, _) in enumerate(idle):
                    if rec is mine:
                        del idle[i]
                        return rec
        return (idle.pop() if self._use_lifo else idle.popleft())[0]

    def _has_room(self) -> bool:
        return self._max_overflow < 0 or self._opened < self._pool_size + self._max_overflow

    def _do_get(self) -> _ConnectionRecord:
        rec = self._get(self._timeout)
        if self._local is not None:
            self._local.record = rec
        self._out[rec] = None
        if self._leak_threshold is not None:
            # Only with leak detection on: a stack costs tens of microseconds.
            rec.__dict__[_CHECKOUT_INFO] = [self._clock(), traceback.format_stack(limit=30)[:-3], False]
        counters = self.counters
        counters.checkouts += 1
        if self._recycle > -1 and rec.dbapi_connection is not None and \
                time.time() - rec.starttime > self._recycle:
            counters.connections_recycled += 1
        return rec

    def _get(self, timeout: float, *, allow_create: bool = True, final: bool = True) -> _ConnectionRecord:
        with self._lock:
            if self._closed:
                raise PoolClosed(f"pool {self.name!r} is closed")
            rec = self._take_idle()
            if rec is not None:
                return rec
            if allow_create and self._has_room():
                self._opened += 1
                waiter = None
            else:
                if self._max_waiting is not None and len(self._waiters) >= self._max_waiting:
                    self.counters.too_many_waiters += 1
                    error = TooManyWaiters(
                        f"pool {self.name!r} is exhausted and {len(self._waiters)} requests already "
                        f"wait (max_waiting={self._max_waiting}, pool_size={self._pool_size}, "
                        f"max_overflow={self._max_overflow}, checked out={self.checkedout()})")
                    logger.warning("%s", error)
                    raise error
                waiter = self._waiter_class()
                self._waiters.append(waiter)
        if waiter is None:
            return self._open()
        # Exhausted: connections held by greenlets or threads that ended
        # without closing come back now, not whenever the cyclic GC runs.
        now = time.monotonic()
        if now >= self._next_reclaim:
            self._next_reclaim = now + RECLAIM_ON_EXHAUSTION_INTERVAL
            self.reclaim_abandoned()
        return self._wait(waiter, timeout, final)

    def _wait(self, waiter: _Waiter, timeout: float, final: bool = True) -> _ConnectionRecord:
        start = self._clock()
        try:
            got = waiter.wait(timeout)
        except BaseException:
            # Killed while waiting (gevent.kill, a Timeout): whatever was
            # handed over, or the place in the queue, must not be lost.
            self._abandon(waiter)
            raise
        if not got:
            with self._lock:
                # A connection handed over between the timeout and this lock
                # still counts: taking it loses nothing.
                got = waiter.item is not None
                if not got:
                    self._waiters.remove(waiter)
                    waiting, out = len(self._waiters), self.checkedout()
            if not got:
                if not final:
                    raise _WaitExpired
                self.counters.timeouts += 1
                self.counters.record_wait(self._clock() - start)
                error = PoolTimeout(
                    f"no connection available for {self.name!r} within {timeout:g} s "
                    f"(pool_size={self._pool_size}, max_overflow={self._max_overflow}, "
                    f"checked out={out}, waiting={waiting}, timeout={self._timeout:g})")
                logger.warning("%s", error)
                raise error
        self.counters.record_wait(self._clock() - start)
        item = waiter.item
        if item is _SLOT:
            return self._open()
        if item is PoolClosed:
            raise PoolClosed(f"pool {self.name!r} was closed while waiting")
        return item

    def _abandon(self, waiter: _Waiter) -> None:
        with self._lock:
            item = waiter.item
            if item is None:  # still queued: nothing was handed over
                self._waiters.remove(waiter)
                return
        if item is _SLOT:
            self._release_slot()
        elif item is not PoolClosed:
            self._do_return_conn(item)

    def _open(self) -> _ConnectionRecord:
        """Open a connection for a slot already counted in ``_opened``."""
        try:
            return self._create_connection()
        except BaseException as exc:
            self._release_slot()
            # The driver's message never contains the password.
            logger.warning("cannot open a connection for %r: %s: %s", self.name, type(exc).__name__, exc)
            raise

    def _release_slot(self) -> None:
        """A counted connection is gone: give its slot to the oldest waiter."""
        with self._lock:
            if self._waiters and not self._closed:
                self._waiters.popleft().wake(_SLOT)
            else:
                self._opened -= 1

    def reclaim_abandoned(self) -> int:
        """Close connections whose owner (greenlet or thread) has ended; return
        how many slots were freed. Their state is unknown: never reused."""
        freed = 0
        for rec in list(self._out):
            ref = rec.fairy_ref
            fairy = ref() if ref is not None else None
            # The owner lives on the fairy, which is created per checkout: a
            # record returned and checked out again meanwhile has a new
            # fairy, so an old owner can never condemn a new checkout.
            owner = fairy.__dict__.get(OWNER_ATTR) if fairy is not None else None
            if owner is None or not owner_dead(owner):
                continue
            # Detach the fairy first: its finalizer must never check this
            # record in a second time once the garbage collector reaches it.
            if not _detach_fairy(rec, ref, fairy):
                continue
            rec.__dict__.pop(LEASED_ATTR, None)
            if self._out.pop(rec, False) is not None:
                continue
            self.counters.leaks += 1
            logger.warning("reclaimed a connection of %r from a greenlet or thread that ended "
                           "without closing it (%s)", self.name, _reclaim_hint(self.name))
            try:
                rec.invalidate()
            finally:
                self._release_slot()
            freed += 1
        return freed

    def housekeep(self) -> float:
        """Periodic maintenance (run by the housekeeping task); returns the
        clock time of the next round it needs."""
        self.reclaim_abandoned()
        if self._leak_threshold is not None:
            self.report_long_checkouts()
        return self._clock() + HOUSEKEEPING_INTERVAL

    def report_long_checkouts(self) -> int:
        """Log, once per checkout, connections held longer than the leak
        detection threshold, with the stack that checked them out."""
        now, reported = self._clock(), 0
        for rec in list(self._out):
            info = rec.__dict__.get(_CHECKOUT_INFO)
            if info is None or info[2] or now - info[0] < self._leak_threshold:
                continue
            info[2] = True
            reported += 1
            logger.warning("a connection of %r has been checked out for %.1f s "
                           "(leak_detection_threshold=%s); checked out at:\n%s", self.name,
                           now - info[0], self._leak_threshold, "".join(info[1]).rstrip())
        return reported

    # -- return ---------------------------------------------------------------
    def _do_return_conn(self, record: _ConnectionRecord) -> None:
        self._out.pop(record, None)
        if self._leak_threshold is not None:
            record.__dict__.pop(_CHECKOUT_INFO, None)
        if record.__dict__.pop(LEASED_ATTR, None) is not None and record.dbapi_connection is not None:
            # Checked out through Django and never released: its wrapper was
            # garbage collected (a greenlet or thread that ended without
            # closing). Its state is unknown, so close it; the server rolls
            # back whatever it left open.
            self.counters.leaks += 1
            logger.warning("a connection of %r was garbage collected without close(); "
                           "closing it (%s)", self.name, _reclaim_hint(self.name))
            record.invalidate()
        if record.dbapi_connection is None:
            # Invalidated: its slot, not the dead record, goes back.
            self._release_slot()
            return
        with self._lock:
            if self._waiters and not self._closed:
                self._waiters.popleft().wake(record)
                return
            keep = not self._closed and self._opened <= self._keep_limit()
            if keep:
                self._idle.append((record, self._clock()))
            else:
                self._opened -= 1
        if not keep:
            record.close()

    def _keep_limit(self) -> int:
        """How many connections may stay open once returned."""
        return self._pool_size

    # -- eviction (multi-host aliases, see hosts.py) ----------------------------
    def evict(self, match: Callable[[_ConnectionRecord], bool], invalidate: bool = True) -> int:
        """Close the idle connections for which ``match(record)`` is true; return how many.

        Their slots go to waiters (who open new connections) or are freed.
        Checked-out connections are the caller's business (closed on return).
        """
        with self._lock:
            victims = [item for item in self._idle if match(item[0])]
            if not victims:
                return 0
            keep = [item for item in self._idle if not match(item[0])]
            self._idle.clear()
            self._idle.extend(keep)
        for rec, _ in victims:
            try:
                if invalidate:
                    rec.invalidate()
                else:
                    rec.close()
            except Exception:  # noqa: BLE001 - the slot is freed whatever closing did
                logger.debug("error while closing an evicted connection of %r", self.name, exc_info=True)
            finally:
                self._release_slot()
        return len(victims)

    # -- disposal -------------------------------------------------------------
    def dispose(self) -> None:
        """Close the idle connections; checked-out ones are closed when returned
        only if :meth:`close` was called."""
        with self._lock:
            idle = [rec for rec, _ in self._idle]
            self._idle.clear()
            self._opened -= len(idle)
        for rec in idle:
            rec.close()
        logger.info("pool of %r disposed: %s", self.name, self.status())

    def close(self) -> None:
        """Dispose and refuse further checkouts; waiters get ``PoolClosed``."""
        with self._lock:
            self._closed = True
            waiters = list(self._waiters)
            self._waiters.clear()
        for w in waiters:
            w.wake(PoolClosed)
        self.dispose()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- introspection ---------------------------------------------------------
    def status(self) -> str:
        return (f"Pool size: {self.size()}  Connections in pool: {self.checkedin()} "
                f"Current Overflow: {self.overflow()} Current Checked out connections: "
                f"{self.checkedout()} Waiting: {self.waiting()}")

    def size(self) -> int:
        return self._pool_size

    def timeout(self) -> float:
        return self._timeout

    def checkedin(self) -> int:
        return len(self._idle)

    def overflow(self) -> int:
        return self._opened - self._pool_size

    def checkedout(self) -> int:
        return self._opened - len(self._idle)

    def waiting(self) -> int:
        return len(self._waiters)

    def opened(self) -> int:
        return self._opened

    def core_size(self) -> int:
        return self._pool_size


class DjangoQueuePool(QueuePool):
    """The seed's elastic pool on SQLAlchemy 2.x.

    Connections opened by a burst stay pooled (up to ``pool_size +
    max_overflow``; with ``max_overflow=0`` a large ``pool_size`` is the
    burst size) and are closed ``retire_quantity`` at a time, every
    ``retire_interval`` seconds, oldest idle first, down to ``core_pool_size``.
    Once ``core_pool_size`` connections are checked out, a checkout first
    waits up to ``unload_timeout`` for one to come back before opening more.
    Each of the three may be a zero-argument callable, evaluated when used.
    """

    def __init__(
        self,
        creator: Callable[..., Any],
        pool_size: int = 30,
        max_overflow: int = 0,
        timeout: float = 30.0,
        use_lifo: bool = False,
        *,
        core_pool_size: Optional[Dynamic] = None,
        unload_timeout: Optional[Dynamic] = None,
        retire_interval: Dynamic = 5,
        retire_quantity: Dynamic = 1,
        **kw: Any,
    ) -> None:
        super().__init__(creator, pool_size, max_overflow, timeout, use_lifo, **kw)
        self._core_pool_size = core_pool_size
        self._unload_timeout = unload_timeout
        self._retire_interval = retire_interval
        self._retire_quantity = retire_quantity
        self._next_retire: Optional[float] = None

    def _recreate_kwargs(self) -> dict:
        kw = super()._recreate_kwargs()
        kw.update(core_pool_size=self._core_pool_size, unload_timeout=self._unload_timeout,
                  retire_interval=self._retire_interval, retire_quantity=self._retire_quantity)
        return kw

    def core_size(self) -> int:
        core = evaluate(self._core_pool_size)
        return self._pool_size if core is None else int(core)

    def _get(self, timeout: float, *, allow_create: bool = True, final: bool = True) -> _ConnectionRecord:
        unload = evaluate(self._unload_timeout)
        if not unload or not allow_create:
            return super()._get(timeout, allow_create=allow_create, final=final)
        with self._lock:
            must_unload = not self._idle and self._opened >= self.core_size()
        if not must_unload:
            return super()._get(timeout)
        start = self._clock()
        try:
            # Wait briefly for a returned connection rather than opening one.
            return super()._get(min(unload, timeout), allow_create=False, final=False)
        except _WaitExpired:
            pass
        return super()._get(max(timeout - (self._clock() - start), 0))

    def retire(self, now: Optional[float] = None) -> int:
        """Close up to ``retire_quantity`` idle connections above core if a
        round is due; return how many were closed. Called by the housekeeper."""
        now = self._clock() if now is None else now
        if self._next_retire is None:
            self._next_retire = now + float(evaluate(self._retire_interval))
        if now < self._next_retire:
            return 0
        self._next_retire = now + float(evaluate(self._retire_interval))
        quantity = int(evaluate(self._retire_quantity))
        core = self.core_size()
        with self._lock:
            n = max(0, min(quantity, self._opened - core, len(self._idle)))
            victims = [self._idle.popleft()[0] for _ in range(n)]
            self._opened -= n
        for rec in victims:
            rec.close()
        self.counters.connections_retired += n
        if n:
            logger.info("retired %d idle connection(s) of %r: %s", n, self.name, self.status())
        return n

    def housekeep(self) -> float:
        due = super().housekeep()
        self.retire()
        return min(due, self._next_retire) if self._next_retire is not None else due
