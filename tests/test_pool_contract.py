"""SQLAlchemy's QueuePool contract, kept by autopool's pool classes (fake connections, no server).

Modelled on SQLAlchemy's own QueuePool tests (test/engine/test_pool.py), which
also run against these classes here: see the last tests and tests/sqla_suite/.
The same rules on the real server, counted there: tests/test_load_regimes.py.
"""
from __future__ import annotations

import inspect
import random
import threading
from typing import Any

import pymysql
import pytest
import sqlalchemy
from django.db import OperationalError
from sqlalchemy.pool.base import _AsyncConnDialect

from autopool import PoolTimeout
from autopool.errors import PoolError
from autopool.pool import DjangoQueuePool, QueuePool
from autopool.waiting import ThreadWaiter
from tests.scenario_main import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Server:
    """A fake server: counts the connections open at once, and can make closing slow."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.peak = 0
        self.opened = 0
        self.fail_connect = False
        self.closing = threading.Event()  # set while a close is held by ``hold_close``
        self.hold_close: threading.Event | None = None

    def connect(self) -> Conn:
        if self.fail_connect:
            raise ConnectionError("server down")
        with self.lock:
            self.open += 1
            self.opened += 1
            self.peak = max(self.peak, self.open)
        return Conn(self)


class Conn:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        hold = self.server.hold_close
        if hold is not None:
            self.server.closing.set()
            assert hold.wait(10), "close held too long"
        self.closed = True
        with self.server.lock:
            self.server.open -= 1

    def rollback(self) -> None:
        pass

    def commit(self) -> None:
        pass


def make(cls: type = QueuePool, **kw: Any) -> tuple[Any, Server]:
    server = Server()
    kw.setdefault("reset_on_return", None)
    return cls(server.connect, **kw), server


def run_threads(n: int, target: Any) -> None:
    """Run ``target(i)`` in ``n`` threads; an exception in any of them fails the test."""
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a worker thread hangs"
    if errors:
        raise errors[0]


# -- the returned-connection rule ----------------------------------------------

@pytest.mark.parametrize("cls", [QueuePool, DjangoQueuePool])
def test_between_pool_size_and_the_cap_a_returned_connection_is_reused(cls: type) -> None:
    # The README's quickstart pool at 9 concurrent requests: each request
    # returns its connection while the 8 others are checked out. SQLAlchemy
    # keeps it (fewer than pool_size idle); it must not be closed and
    # reopened by the next request.
    pool, server = make(cls, pool_size=5, max_overflow=10)
    held = [pool.connect() for _ in range(9)]
    assert server.opened == 9
    for _ in range(500):
        held.pop(0).close()
        held.append(pool.connect())
    assert server.opened == 9 and pool.checkedout() == 9
    for c in held:
        c.close()


def test_queuepool_keeps_pool_size_idle_and_closes_the_rest() -> None:
    # SQLAlchemy's test_queuepool_close: what is idle never exceeds pool_size.
    pool, server = make(pool_size=3, max_overflow=-1)
    held = [pool.connect() for _ in range(10)]
    for c in held:
        c.close()
    assert (pool.checkedin(), pool.checkedout(), server.open) == (3, 0, 3)


def test_pool_size_zero_means_no_size_limit() -> None:
    # As SQLAlchemy defines it: nothing caps the open connections, and every
    # returned one stays pooled.
    pool, server = make(pool_size=0, max_overflow=0, timeout=0.01)
    held = [pool.connect() for _ in range(40)]
    assert server.open == 40 and pool.overflow() == 0
    for c in held:
        c.close()
    assert (pool.checkedin(), server.open) == (40, 40)
    again = [pool.connect() for _ in range(40)]
    assert server.opened == 40
    for c in again:
        c.close()


# -- the cap, counted where the server counts it --------------------------------

def test_a_slot_is_freed_only_after_its_connection_is_closed() -> None:
    # pool_size=1, max_overflow=1: b is returned while a is idle, so b is
    # closed. While b's close is still under way, a second checkout must wait
    # rather than open a third session beside a and b.
    pool, server = make(pool_size=1, max_overflow=1, timeout=10)
    a, b = pool.connect(), pool.connect()
    a.close()
    server.hold_close = threading.Event()
    closer = threading.Thread(target=b.close)
    closer.start()
    assert server.closing.wait(10)
    got: list[Any] = []
    first = pool.connect()  # a, idle
    waiter = threading.Thread(target=lambda: got.append(pool.connect()))
    waiter.start()
    wait_until(lambda: pool.waiting() == 1, timeout=10)
    assert server.open == 2 and server.peak == 2
    server.hold_close.set()
    closer.join(10)
    waiter.join(10)
    assert len(got) == 1 and server.peak == 2
    server.hold_close = None
    first.close()
    got[0].close()


@pytest.mark.parametrize("cls", [QueuePool, DjangoQueuePool])
def test_never_more_connections_open_than_the_cap_under_churn(cls: type) -> None:
    # Threads check out, sometimes invalidate, and return; closes are slow
    # enough to overlap with checkouts. The fake server's count of open
    # connections never passes pool_size + max_overflow.
    pool, server = make(cls, pool_size=2, max_overflow=2, timeout=30)
    rng = random.Random(16)
    choices = [rng.random() for _ in range(8 * 150)]

    def work(i: int) -> None:
        for j in range(150):
            c = pool.connect()
            if choices[i * 150 + j] < 0.1:
                c.invalidate()
            c.close()

    run_threads(8, work)
    assert server.peak <= 4, server.peak
    idle, out = pool.connection_records()
    assert out == [] and server.open == sum(rec.dbapi_connection is not None for rec in idle) <= 4


# -- errors -----------------------------------------------------------------------

def test_pool_timeout_is_sqlalchemys_timeout_error_and_djangos_operational_error() -> None:
    pool, _ = make(pool_size=1, max_overflow=0, timeout=0.05)
    held = pool.connect()
    for cls in (sqlalchemy.exc.TimeoutError, sqlalchemy.exc.SQLAlchemyError, OperationalError, PoolError,
                PoolTimeout):
        with pytest.raises(cls, match="no connection available"):
            pool.connect()
    held.close()


# -- invalidation: reconnected in place ----------------------------------------------

def test_record_info_survives_invalidation_and_info_does_not() -> None:
    pool, server = make(pool_size=2, max_overflow=0)
    c = pool.connect()
    c.record_info["kept"] = True
    c.info["per_connection"] = True
    first = c.dbapi_connection
    c.invalidate()
    c.close()
    assert (pool.checkedin(), pool.checkedout(), server.open) == (1, 0, 0)
    c = pool.connect()
    assert c.dbapi_connection is not first and c.record_info == {"kept": True} and "per_connection" not in c.info
    c.close()


def test_failed_reconnect_keeps_the_entry_and_its_slot() -> None:
    # SQLAlchemy's test_error_on_pooled_reconnect_cleanup_*: the entry goes
    # back to the pool, so the slot count neither leaks nor doubles.
    pool, server = make(pool_size=1, max_overflow=0, timeout=0.05)
    c = pool.connect()
    c.invalidate()
    c.close()
    server.fail_connect = True
    with pytest.raises(ConnectionError):
        pool.connect()
    assert (pool.opened(), pool.checkedin(), pool.checkedout()) == (1, 1, 0)
    server.fail_connect = False
    c = pool.connect()
    assert not c.dbapi_connection.closed and server.open == 1
    c.close()


# -- asyncio ----------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [QueuePool, DjangoQueuePool])
def test_asyncio_dialects_are_refused(cls: type) -> None:
    assert cls._is_asyncio is False
    assert cls(lambda: None)._is_asyncio is False
    with pytest.raises(sqlalchemy.exc.ArgumentError, match="asyncio"):
        cls(lambda: None, dialect=_AsyncConnDialect())
    with pytest.raises(sqlalchemy.exc.ArgumentError, match="asyncio"):
        sqlalchemy.create_engine("mysql+aiomysql://u@h/d", module=pymysql, poolclass=cls)
    engine = sqlalchemy.create_engine("mysql+pymysql://u@h/d", poolclass=cls)
    assert type(engine.pool) is cls and engine.pool._is_asyncio is False


# -- DjangoQueuePool ----------------------------------------------------------------------

def test_django_queue_pool_keeps_a_burst_up_to_the_cap_then_retires_it_gradually() -> None:
    clock = Clock()
    pool, server = make(DjangoQueuePool, pool_size=2, max_overflow=3, retire_interval=10, retire_quantity=1,
                        clock=clock)
    held = [pool.connect() for _ in range(5)]
    for c in held:
        c.close()
    assert (pool.checkedin(), server.open) == (5, 5)  # the whole burst stays pooled
    assert pool.retire() == 0  # the first round only schedules
    open_after_each_round = []
    for _ in range(5):
        clock.now += 10
        pool.retire()
        open_after_each_round.append(server.open)
    assert open_after_each_round == [4, 3, 2, 2, 2]  # one per round, down to pool_size (the core)
    assert pool.counters.connections_retired == 3


def test_django_queue_pool_housekeep_returns_seconds_until_its_next_round() -> None:
    clock = Clock()
    pool, _ = make(DjangoQueuePool, pool_size=2, max_overflow=3, retire_interval=0.25, clock=clock)
    assert 0 <= pool.housekeep() <= 0.25
    assert 0 <= make(QueuePool)[0].housekeep() <= 1.0


# -- recreate() -------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [QueuePool, DjangoQueuePool])
def test_recreate_passes_on_every_constructor_argument(cls: type) -> None:
    seen: list[dict[str, Any]] = []

    class Recording(cls):  # type: ignore[valid-type,misc]
        def __init__(self, creator: Any, **kw: Any) -> None:
            seen.append(kw)
            super().__init__(creator, **kw)

    values: dict[str, Any] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name in ("self", "creator") or param.kind is param.VAR_KEYWORD:
            continue
        default = param.default
        values[name] = (not default if isinstance(default, bool) else
                        default + 3 if isinstance(default, (int, float)) else f"non-default {name}")
    values["clock"] = Clock()
    values["counters"] = None
    values.update(recycle=42, pre_ping=True, reset_on_return="commit", logging_name="lg", echo="debug")
    pool = Recording(lambda: None, **values)
    pool.recreate()
    given = dict(values, counters=pool.counters)
    for name, value in given.items():
        assert seen[1].get(name, "missing") == value or (
            name == "reset_on_return" and seen[1][name].name == "reset_commit"), name


# -- waiting: one claim decides between a give-up and a hand-over ----------------------------

def test_a_hand_over_that_races_the_timeout_is_taken() -> None:
    class HandedAsItTimesOut(ThreadWaiter):
        __slots__ = ("offered",)

        def _block(self, timeout: float | None) -> bool:
            self.offered = self.set("conn")  # a return arrives just as the wait times out
            return False

    w = HandedAsItTimesOut()
    assert w.wait(0) is True and w.offered is True and w.item == "conn"


def test_a_waiter_that_gave_up_refuses_what_is_offered_later() -> None:
    w = ThreadWaiter()
    assert w.wait(0) is False
    assert w.set("conn") is False and w.fail(RuntimeError("x")) is False
    handed = ThreadWaiter()
    assert handed.set("conn") is True and handed.cancel() == "conn"  # interrupted after the hand-over
    assert ThreadWaiter().cancel() is None


class Killed(BaseException):
    """What gevent.kill() or a KeyboardInterrupt raises in a waiting checkout."""


@pytest.mark.parametrize("after_hand_over", [True, False])
def test_a_checkout_killed_while_waiting_loses_no_connection(after_hand_over: bool) -> None:
    class KilledWaiter(ThreadWaiter):
        __slots__ = ()

        def _block(self, timeout: float | None) -> bool:
            if after_hand_over:
                super()._block(timeout)  # handed the connection, then killed before it runs again
            raise Killed

    pool, server = make(pool_size=1, max_overflow=0, timeout=10)
    held = pool.connect()
    pool._waiter_class = KilledWaiter
    outcome: list[BaseException] = []

    def checkout() -> None:
        try:
            pool.connect()
        except Killed as exc:
            outcome.append(exc)

    t = threading.Thread(target=checkout)
    t.start()
    wait_until(lambda: pool.waiting() == 1 or not t.is_alive(), timeout=10)
    if after_hand_over:
        held.close()
    t.join(10)
    assert len(outcome) == 1 and pool.waiting() == 0
    if not after_hand_over:
        held.close()
    assert (pool.opened(), pool.checkedin(), pool.checkedout(), server.open) == (1, 1, 0, 1)


@pytest.mark.parametrize("after_hand_over", [True, False])
def test_a_greenlet_killed_while_waiting_on_the_hub_loses_no_connection(after_hand_over: bool) -> None:
    # gevent's kill is delivered by the hub; a return that handed the
    # connection over before the hub ran (its switch still pending) must not
    # lose it, nor may a waiter killed before any hand-over stay queued.
    gevent = pytest.importorskip("gevent")
    from autopool.waiting import HubWaiter

    pool, server = make(pool_size=1, max_overflow=0, timeout=10)
    pool._waiter_class = HubWaiter
    held = pool.connect()
    g = gevent.spawn(pool.connect)
    for _ in range(1000):
        if pool.waiting() == 1:
            break
        gevent.sleep(0.001)
    assert pool.waiting() == 1
    g.kill(gevent.GreenletExit, block=False)  # delivered when the hub next runs ...
    if after_hand_over:
        held.close()  # ... after this return handed the connection to the waiting greenlet
    g.join(10)
    assert g.dead and isinstance(g.value, gevent.GreenletExit) and pool.waiting() == 0  # killed, not served
    if not after_hand_over:
        held.close()
    assert (pool.opened(), pool.checkedin(), pool.checkedout(), server.open) == (1, 1, 0, 1)


# -- SQLAlchemy's own suite ----------------------------------------------------------------

@pytest.mark.gevent_subprocess
@pytest.mark.parametrize("pool_class", ["QueuePool", "DjangoQueuePool"])
def test_sqlalchemy_pool_suite_passes(pool_class: str) -> None:
    # SQLAlchemy's test/engine/test_pool.py of the installed release, in a
    # subprocess, with sqlalchemy.pool.QueuePool replaced (tests/sqla_suite).
    from tests.sqla_suite import run

    result = run.run(pool_class)
    assert not result.failed, "\n\n".join(f"{k}\n{v[-2000:]}" for k, v in result.failed.items())
    assert len(result.passed) > 100, result
