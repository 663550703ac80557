"""Pool classes: SQLAlchemy's QueuePool contract with fair, bounded waiting.

:class:`QueuePool` keeps SQLAlchemy's ``QueuePool`` options and contract:
``pool_size`` connections stay pooled once returned (``0``: no limit),
``max_overflow`` more may be open at once (``-1``: no limit), a connection
that is not kept is closed *before* its slot is handed on (so the server
never holds more than ``pool_size + max_overflow`` sessions of the pool), an
invalidated entry is reconnected in place on its next checkout (its
``record_info`` survives), and exhaustion raises ``PoolTimeout``, which is
also SQLAlchemy's ``TimeoutError``. On top of it: a returned connection goes
to the oldest waiter first, the number of waiters is bounded, and errors
carry the numbers that matter. One lock guards the bookkeeping; connecting,
closing and waiting happen outside it, so a slow server never serialises
other requests. Waiting is ``waiting.py``'s; who owns a checkout is
``leases.py``'s.

:class:`DjangoQueuePool` is the seed library's elastic pool: connections that
a burst forced open stay pooled and are retired gradually afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import ConnectionPoolEntry, Pool

from .counters import Counters
from .dynamic import Dynamic, evaluate
from .errors import PoolClosed, PoolTimeout, TooManyWaiters
from .housekeeping import ROUND_INTERVAL
from .leases import LEASED_ATTR, reclaim_hint, take_abandoned
from .waiting import Waiter, waiter_class

logger = logging.getLogger("autopool")

# Record attribute with [checkout time, stack, reported] (leak detection).
_CHECKOUT_INFO = "_autopool_checkout_info"

# Least seconds between two such scans made because the pool is exhausted: an
# overloaded pool is exhausted at nearly every checkout, and a scan per
# checkout (one liveness check per checked-out connection) costs more than the
# request's own pool work.
RECLAIM_ON_EXHAUSTION_INTERVAL = 0.05

# Handed to a waiter instead of a connection: "a slot is free, open one".
_SLOT = object()


class _WaitExpired(Exception):
    """A preliminary wait (the elastic pool's unload timeout) ran out."""


# Arguments of SQLAlchemy's Pool that recreate() takes from the pool's state,
# as SQLAlchemy's own QueuePool.recreate() does; every other argument is
# carried as given (see QueuePool._options).
_STATE_ARGS = ("recycle", "echo", "logging_name", "reset_on_return", "pre_ping", "dialect", "events", "_dispatch")


def _given(arguments: dict[str, Any], *, with_kw: bool = True) -> dict[str, Any]:
    """A constructor's arguments from its ``locals()``, for ``recreate()``;
    ``with_kw=False`` for a subclass's own, named arguments only."""
    options = {k: v for k, v in arguments.items() if k not in ("self", "creator", "kw", "__class__")}
    if with_kw:
        options.update((k, v) for k, v in arguments.get("kw", {}).items() if k not in _STATE_ARGS)
    return options


class QueuePool(Pool):
    """A fair, bounded queue pool with SQLAlchemy's ``QueuePool`` contract.

    Keyword-only options beyond SQLAlchemy's ``QueuePool``:

    ``max_waiting`` (default ``None``: no limit)
        Checkouts allowed to wait at once; the next raises ``TooManyWaiters``.
    ``use_threadlocal`` (default ``False``)
        Prefer the idle connection the calling thread returned last.
    ``leak_detection_threshold`` (default ``None``)
        Log connections checked out longer than this many seconds.
    ``name`` (default ``None``)
        Shown in error messages and stats; autopool passes the alias.
    """

    # Like SQLAlchemy's QueuePool, whatever the dialect: create_engine()
    # refuses the pool for an asyncio dialect.
    _is_asyncio = False

    def __init__(
        self,
        creator: Callable[..., Any],
        pool_size: int = 5,
        max_overflow: int = 10,
        timeout: float = 30.0,
        use_lifo: bool = False,
        *,
        max_waiting: int | None = None,
        use_threadlocal: bool = False,
        leak_detection_threshold: float | None = None,
        name: str | None = None,
        counters: Counters | None = None,
        clock: Callable[[], float] = time.monotonic,
        **kw: Any,
    ) -> None:
        # Everything recreate() must pass on, from one place: the arguments.
        self._options = _given(locals())
        super().__init__(creator, **kw)
        if getattr(self._dialect, "is_async", False):
            raise ArgumentError(
                f"{type(self).__name__} cannot be used with an asyncio dialect (use SQLAlchemy's AsyncAdaptedQueuePool)"
            )
        self._pool_size = pool_size
        # As in SQLAlchemy: pool_size=0 means no size limit at all.
        self._max_overflow = -1 if pool_size == 0 else max_overflow
        self._timeout = timeout
        self._use_lifo = use_lifo
        self._max_waiting = max_waiting
        self._use_threadlocal = use_threadlocal
        self._leak_threshold = leak_detection_threshold
        self.name = name or "pool"
        self.counters = counters if counters is not None else Counters()
        self._options["counters"] = self.counters  # a recreated pool counts on
        self._clock = clock
        self._lock = threading.Lock()
        # (record, time it became idle); the left end is the oldest idle.
        self._idle: deque[tuple[ConnectionPoolEntry, float]] = deque()
        self._waiters: deque[Waiter] = deque()
        self._waiter_class = waiter_class()
        # Records that exist: idle, checked out, connecting or closing. A slot
        # is counted until its connection is closed.
        self._opened = 0
        self._closed = False
        self._local = threading.local() if use_threadlocal else None
        # Checked-out records (an ordered set), scanned for abandoned ones
        # only when the pool is exhausted.
        self._out: dict[ConnectionPoolEntry, None] = {}
        self._next_reclaim = 0.0  # time.monotonic() before which exhaustion does not scan

    def recreate(self) -> QueuePool:
        self.logger.info("Pool recreating")
        return self.__class__(
            self._creator,
            **self._options,
            recycle=self._recycle,
            echo=self.echo,
            logging_name=self._orig_logging_name,
            reset_on_return=self._reset_on_return,
            pre_ping=self._pre_ping,
            _dispatch=self.dispatch,
            dialect=self._dialect,
        )

    # -- checkout -------------------------------------------------------------
    def _take_idle(self) -> ConnectionPoolEntry | None:
        """Pop an idle record; the caller holds the lock."""
        idle = self._idle
        if not idle:
            return None
        if self._local is not None:
            mine: ConnectionPoolEntry | None = getattr(self._local, "record", None)
            if mine is not None:
                for i, (rec, _) in enumerate(idle):
                    if rec is mine:
                        del idle[i]
                        return rec
        rec, _ = idle.pop() if self._use_lifo else idle.popleft()
        return rec

    def _has_room(self) -> bool:
        return self._max_overflow < 0 or self._opened < self._pool_size + self._max_overflow

    def _do_get(self) -> ConnectionPoolEntry:
        rec = self._get(self._timeout)
        if self._local is not None:
            self._local.record = rec
        self._out[rec] = None
        if self._leak_threshold is not None:
            # Only with leak detection on: a stack costs tens of microseconds.
            rec.__dict__[_CHECKOUT_INFO] = [self._clock(), traceback.format_stack(limit=30)[:-3], False]
        counters = self.counters
        counters.checkouts += 1
        if self._recycle > -1 and rec.dbapi_connection is not None and time.time() - rec.starttime > self._recycle:  # type: ignore[attr-defined]  # SQLAlchemy's record has it
            counters.connections_recycled += 1
        return rec

    def _get(self, timeout: float, *, allow_create: bool = True, final: bool = True) -> ConnectionPoolEntry:
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
                        f"max_overflow={self._max_overflow}, checked out={self.checkedout()})"
                    )
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

    def _wait(self, waiter: Waiter, timeout: float, final: bool = True) -> ConnectionPoolEntry:
        start = self._clock()
        try:
            handed = waiter.wait(timeout)
        except BaseException:
            # Killed while waiting (gevent.kill, a Timeout): what was handed
            # over meanwhile goes back; the place in the queue is dropped.
            item = waiter.cancel()
            if item is _SLOT:
                self._release_slot()
            elif item is not None:
                self._do_return_conn(item)
            else:
                self._forget(waiter)
            raise
        if not handed:
            waiting, out = self._forget(waiter), self.checkedout()
            if not final:
                raise _WaitExpired
            self.counters.timeouts += 1
            self.counters.record_wait(self._clock() - start)
            error = PoolTimeout(
                f"no connection available for {self.name!r} within {timeout:g} s "
                f"(pool_size={self._pool_size}, max_overflow={self._max_overflow}, "
                f"checked out={out}, waiting={waiting}, timeout={self._timeout:g})"
            )
            logger.warning("%s", error)
            raise error
        self.counters.record_wait(self._clock() - start)
        if waiter.error is not None:
            raise waiter.error
        item = waiter.item
        if item is _SLOT:
            return self._open()
        return cast(ConnectionPoolEntry, item)

    def _forget(self, waiter: Waiter) -> int:
        """Drop a waiter that gave up from the queue; return how many still wait."""
        with self._lock:
            try:
                self._waiters.remove(waiter)
            except ValueError:  # already popped by a return it did not take
                pass
            return len(self._waiters)

    def _open(self) -> ConnectionPoolEntry:
        """Open a connection for a slot already counted in ``_opened``."""
        try:
            return self._create_connection()
        except BaseException as exc:
            self._release_slot()
            # The driver's message never contains the password.
            logger.warning("cannot open a connection for %r: %s: %s", self.name, type(exc).__name__, exc)
            raise

    def _release_slot(self) -> None:
        """A counted connection is closed: give its slot to the oldest waiter."""
        with self._lock:
            waiters = self._waiters
            while waiters and not self._closed:
                if waiters.popleft().set(_SLOT):
                    return
            self._opened -= 1

    def reclaim_abandoned(self) -> int:
        """Take back connections whose owner (greenlet or thread) has ended;
        return how many. Their state is unknown: they are invalidated, and
        reconnected on their next checkout."""
        freed = 0
        for rec in list(self._out):
            if not take_abandoned(rec):
                continue
            if self._out.pop(rec, False) is not None:
                continue  # returned meanwhile
            self.counters.leaks += 1
            logger.warning(
                "reclaimed a connection of %r from a greenlet or thread that ended without closing it (%s)",
                self.name,
                reclaim_hint(self.name),
            )
            try:
                rec.invalidate()
            finally:
                self._do_return_conn(rec)
            freed += 1
        return freed

    def housekeep(self) -> float:
        """Periodic maintenance (run by the housekeeping task); returns the
        seconds until the next round it needs."""
        self.reclaim_abandoned()
        if self._leak_threshold is not None:
            self.report_long_checkouts()
        return ROUND_INTERVAL

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
            logger.warning(
                "a connection of %r has been checked out for %.1f s (leak_detection_threshold=%s); checked out at:\n%s",
                self.name,
                now - info[0],
                self._leak_threshold,
                "".join(info[1]).rstrip(),
            )
        return reported

    # -- return ---------------------------------------------------------------
    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        """Also takes back a record that was never checked out (reclaimed, or
        handed to a waiter that was killed)."""
        self._out.pop(record, None)
        if self._leak_threshold is not None:
            record.__dict__.pop(_CHECKOUT_INFO, None)
        if record.__dict__.pop(LEASED_ATTR, None) is not None and record.dbapi_connection is not None:
            # Checked out through Django and never released: its wrapper was
            # garbage collected (a greenlet or thread that ended without
            # closing). Its state is unknown, so close it; the server rolls
            # back whatever it left open.
            self.counters.leaks += 1
            logger.warning(
                "a connection of %r was garbage collected without close(); closing it (%s)",
                self.name,
                reclaim_hint(self.name),
            )
            record.invalidate()
        # Back (an invalidated entry too: it reconnects at its next checkout):
        # to the oldest waiter, else kept, else closed.
        with self._lock:
            waiters = self._waiters
            while waiters and not self._closed:
                if waiters.popleft().set(record):
                    return
            if not self._closed and self._keeps():
                self._idle.append((record, self._clock()))
                return
        # Closed before its slot is freed, so a new connection never
        # coexists with it on the server.
        try:
            record.close()
        finally:
            self._release_slot()

    def _keeps(self) -> bool:
        """SQLAlchemy's rule: a returned connection stays while fewer than
        ``pool_size`` are idle (all of them with ``pool_size=0``). The caller
        holds the lock."""
        return len(self._idle) < self._pool_size or self._pool_size == 0

    # -- inspection for hosts.py ----------------------------------------------
    def connection_records(self) -> tuple[list[ConnectionPoolEntry], list[ConnectionPoolEntry]]:
        """A snapshot of the idle and the checked-out records."""
        with self._lock:
            return [rec for rec, _ in self._idle], list(self._out)

    # -- eviction (multi-host aliases, see hosts.py) ----------------------------
    def evict(self, match: Callable[[ConnectionPoolEntry], bool], invalidate: bool = True) -> int:
        """Close the idle connections for which ``match(record)`` is true; return how many.

        Their slots go to waiters (who open new connections) or are freed,
        each once its connection is closed. Checked-out connections are the
        caller's business (closed on return).
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

    def _close_idle(self, records: list[ConnectionPoolEntry]) -> None:
        """Close records taken out of ``_idle``, freeing each slot after its close."""
        for rec in records:
            try:
                rec.close()
            finally:
                self._release_slot()

    # -- disposal -------------------------------------------------------------
    # -- fork (fork.py): no I/O happens under the lock, so it may be held across os.fork().
    def lock_for_fork(self, timeout: float) -> bool:
        """Before ``os.fork()``: hold the bookkeeping still, so the child copies it whole.

        False if another thread kept the lock ``timeout`` seconds.
        """
        return self._lock.acquire(timeout=timeout)

    def release_after_fork(self) -> None:
        """After ``os.fork()``, in the parent and in the child: let go of what :meth:`lock_for_fork` took."""
        self._lock.release()

    def after_fork_in_child(self) -> None:
        """In a forked child, before its checkouts leave the pool: a fresh lock.

        The inherited one may be held by a thread the child does not have (a
        fork that ran no at-fork handler, so no :meth:`lock_for_fork`).
        """
        self._lock = threading.Lock()

    def dispose(self) -> None:
        """Close the idle connections; checked-out ones are closed when returned
        only if :meth:`close` was called."""
        with self._lock:
            idle = [rec for rec, _ in self._idle]
            self._idle.clear()
        self._close_idle(idle)
        logger.info("pool of %r disposed: %s", self.name, self.status())

    def close(self) -> None:
        """Dispose and refuse further checkouts; waiters get ``PoolClosed``."""
        with self._lock:
            self._closed = True
            waiters = list(self._waiters)
            self._waiters.clear()
        for w in waiters:
            w.fail(PoolClosed(f"pool {self.name!r} was closed while waiting"))
        self.dispose()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- introspection ---------------------------------------------------------
    def status(self) -> str:
        return (
            f"Pool size: {self.size()}  Connections in pool: {self.checkedin()} "
            f"Current Overflow: {self.overflow()} Current Checked out connections: "
            f"{self.checkedout()} Waiting: {self.waiting()}"
        )

    def size(self) -> int:
        return self._pool_size

    def timeout(self) -> float:
        return self._timeout

    def checkedin(self) -> int:
        return len(self._idle)

    def overflow(self) -> int:
        return self._opened - self._pool_size if self._pool_size else 0

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

    A returned connection is kept while no more than ``pool_size +
    max_overflow`` are open (so everything a burst opened stays pooled; with
    ``max_overflow=0`` a large ``pool_size`` is the burst size). Idle
    connections above ``core_pool_size`` (default ``pool_size``) are closed
    ``retire_quantity`` at a time, every ``retire_interval`` seconds, oldest
    idle first. Once ``core_pool_size`` connections are checked out, a
    checkout first waits up to ``unload_timeout`` for one to come back
    before opening more. Each of the four may be a zero-argument callable,
    evaluated when used.
    """

    def __init__(
        self,
        creator: Callable[..., Any],
        pool_size: int = 30,
        max_overflow: int = 0,
        timeout: float = 30.0,
        use_lifo: bool = False,
        *,
        core_pool_size: Dynamic | None = None,
        unload_timeout: Dynamic | None = None,
        retire_interval: Dynamic = 5,
        retire_quantity: Dynamic = 1,
        **kw: Any,
    ) -> None:
        options = _given(locals(), with_kw=False)
        super().__init__(creator, pool_size, max_overflow, timeout, use_lifo, **kw)
        self._options.update(options)
        self._core_pool_size = core_pool_size
        self._unload_timeout = unload_timeout
        self._retire_interval = retire_interval
        self._retire_quantity = retire_quantity
        self._next_retire: float | None = None

    def _keeps(self) -> bool:
        # Every slot counted in _opened is within the cap, so everything a
        # burst opened stays; retire() brings the pool back down to core.
        return self._max_overflow < 0 or self._opened <= self._pool_size + self._max_overflow

    def core_size(self) -> int:
        core = evaluate(self._core_pool_size)
        return self._pool_size if core is None else int(core)

    def _get(self, timeout: float, *, allow_create: bool = True, final: bool = True) -> ConnectionPoolEntry:
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

    def retire(self, now: float | None = None) -> int:
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
        self._close_idle(victims)
        self.counters.connections_retired += n
        if n:
            logger.info("retired %d idle connection(s) of %r: %s", n, self.name, self.status())
        return n

    def housekeep(self) -> float:
        due = super().housekeep()
        self.retire()
        if self._next_retire is None:
            return due
        return min(due, max(self._next_retire - self._clock(), 0.0))
