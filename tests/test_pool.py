"""Pool logic with fake connections and an injected clock (no server)."""
from __future__ import annotations

import threading
import time

import pytest

from autopool import PoolClosed, PoolTimeout, TooManyWaiters
from autopool.pool import DjangoQueuePool, QueuePool
from tests.scenario_main import wait_until


class FakeConnection:
    opened = 0

    def __init__(self):
        FakeConnection.opened += 1
        self.id = FakeConnection.opened
        self.closed = False
        self.rollbacks = 0

    def close(self):
        self.closed = True

    def rollback(self):
        self.rollbacks += 1

    def commit(self):
        pass


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make(cls=QueuePool, **kw):
    created = []

    def creator():
        conn = FakeConnection()
        created.append(conn)
        return conn

    kw.setdefault("reset_on_return", None)
    pool = cls(creator, **kw)
    return pool, created


def test_overflow_is_closed_on_return_and_pool_size_kept():
    pool, created = make(pool_size=2, max_overflow=2)
    conns = [pool.connect() for _ in range(4)]
    assert pool.checkedout() == 4 and pool.overflow() == 2
    for c in conns:
        c.close()
    assert pool.checkedin() == 2
    assert sum(c.closed for c in created) == 2
    assert pool.counters.connections_closed == 0  # counted by registry events, not here


def test_waiters_are_served_first_come_first_served():
    pool, _ = make(pool_size=1, max_overflow=0, timeout=10)
    held = pool.connect()
    order, threads = [], []

    def waiter(i):
        conn = pool.connect()
        order.append(i)
        conn.close()

    for i in range(6):
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        threads.append(t)
        wait_until(lambda: pool.waiting() == i + 1)  # enqueued strictly in order
    held.close()
    for t in threads:
        t.join(10)
    assert order == list(range(6))
    assert pool.checkedout() == 0 and pool.waiting() == 0


def test_a_newcomer_does_not_barge_ahead_of_waiters():
    pool, _ = make(pool_size=1, max_overflow=0, timeout=10)
    held = pool.connect()
    got = []
    first = threading.Thread(target=lambda: (got.append("waiter"), pool.connect().close()))

    def waiter():
        conn = pool.connect()
        got.append("waiter-got")
        conn.close()

    first = threading.Thread(target=waiter)
    first.start()
    wait_until(lambda: pool.waiting() == 1)
    held.close()  # handed straight to the waiter: the idle queue stays empty
    newcomer = pool.connect()
    got.append("newcomer-got")
    newcomer.close()
    first.join(10)
    assert got == ["waiter-got", "newcomer-got"]


def test_timeout_raises_pool_timeout_naming_the_numbers():
    pool, _ = make(pool_size=1, max_overflow=1, timeout=0.05, name="reports")
    a, b = pool.connect(), pool.connect()
    start = time.monotonic()
    with pytest.raises(PoolTimeout) as info:
        pool.connect()
    assert time.monotonic() - start >= 0.04
    message = str(info.value)
    for part in ("'reports'", "pool_size=1", "max_overflow=1", "checked out=2", "waiting=0", "timeout=0.05"):
        assert part in message
    assert pool.counters.timeouts == 1 and pool.waiting() == 0
    a.close()
    b.close()


def test_max_waiting_rejects_at_once():
    pool, _ = make(pool_size=1, max_overflow=0, timeout=5, max_waiting=1)
    held = pool.connect()
    t = threading.Thread(target=lambda: pool.connect().close())
    t.start()
    wait_until(lambda: pool.waiting() == 1)
    with pytest.raises(TooManyWaiters) as info:
        pool.connect()
    assert "max_waiting=1" in str(info.value)
    held.close()
    t.join(10)
    assert pool.counters.too_many_waiters == 1


def test_failed_connect_frees_its_slot_for_a_waiter():
    attempts = []

    def creator():
        attempts.append(1)
        if len(attempts) == 2:
            raise OSError("server down")
        return FakeConnection()

    pool = QueuePool(creator, pool_size=1, max_overflow=1, timeout=5, reset_on_return=None)
    a = pool.connect()
    with pytest.raises(OSError):
        pool.connect()
    b = pool.connect()  # the failed attempt did not leak a slot
    assert pool.checkedout() == 2
    a.close()
    b.close()


def test_invalidated_entry_is_reconnected_in_place():
    # SQLAlchemy's _ConnectionRecord contract: the entry (and its record_info)
    # stays in the pool, closed; its next checkout opens a new connection.
    pool, created = make(pool_size=1, max_overflow=0, timeout=5)
    a = pool.connect()
    a.record_info["mark"] = 1
    a.invalidate()
    assert created[0].closed
    assert (pool.checkedout(), pool.checkedin(), pool.opened()) == (0, 1, 1)
    b = pool.connect()
    assert b.dbapi_connection is created[1] and b.record_info == {"mark": 1}
    b.close()


def test_close_wakes_waiters_with_pool_closed():
    pool, _ = make(pool_size=1, max_overflow=0, timeout=10)
    held = pool.connect()
    errors = []

    def waiter():
        try:
            pool.connect()
        except PoolClosed as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    wait_until(lambda: pool.waiting() == 1)
    pool.close()
    t.join(10)
    assert len(errors) == 1
    raw = held.dbapi_connection
    held.close()  # returned to a closed pool: closed, not pooled
    assert raw.closed and pool.checkedin() == 0
    with pytest.raises(PoolClosed):
        pool.connect()


def test_recreate_keeps_every_option():
    pool, _ = make(DjangoQueuePool, pool_size=7, max_overflow=3, timeout=4, use_lifo=True, max_waiting=9,
                   use_threadlocal=True, name="x", core_pool_size=2, unload_timeout=0.5,
                   retire_interval=3, retire_quantity=2, recycle=60)
    new = pool.recreate()
    assert type(new) is DjangoQueuePool
    for attr in ("_pool_size", "_max_overflow", "_timeout", "_use_lifo", "_max_waiting", "_use_threadlocal",
                 "name", "_core_pool_size", "_unload_timeout", "_retire_interval", "_retire_quantity",
                 "_recycle", "_creator"):
        assert getattr(new, attr) == getattr(pool, attr), attr
    assert new.counters is pool.counters


def test_lifo_hands_out_the_most_recent_connection():
    pool, created = make(pool_size=3, max_overflow=0, use_lifo=True)
    conns = [pool.connect() for _ in range(3)]
    for c in conns:
        c.close()
    again = pool.connect()
    assert again.dbapi_connection is created[2]
    again.close()


# -- DjangoQueuePool -----------------------------------------------------------

def burst(pool, n):
    conns = [pool.connect() for _ in range(n)]
    for c in conns:
        c.close()


def test_burst_connections_stay_pooled_then_retire_gradually():
    clock = Clock()
    pool, created = make(DjangoQueuePool, pool_size=10, max_overflow=0, core_pool_size=3,
                         retire_interval=5, retire_quantity=2, clock=clock)
    burst(pool, 10)
    assert pool.checkedin() == 10  # not closed on return: no overflow with max_overflow=0
    assert pool.retire() == 0  # first round only schedules
    history = []
    for _ in range(6):
        clock.now += 5
        pool.retire()
        history.append(pool.opened())
    assert history == [8, 6, 4, 3, 3, 3]  # 2 per round, never below core
    assert sum(c.closed for c in created) == 7
    assert pool.counters.connections_retired == 7


def test_retirement_only_between_rounds():
    clock = Clock()
    pool, _ = make(DjangoQueuePool, pool_size=6, max_overflow=0, core_pool_size=1,
                   retire_interval=5, retire_quantity=1, clock=clock)
    burst(pool, 6)
    pool.retire()
    clock.now += 4.9
    assert pool.retire() == 0
    clock.now += 0.1
    assert pool.retire() == 1


def test_checked_out_connections_are_never_retired():
    clock = Clock()
    pool, created = make(DjangoQueuePool, pool_size=6, max_overflow=0, core_pool_size=1,
                         retire_interval=1, retire_quantity=10, clock=clock)
    held = [pool.connect() for _ in range(4)]
    burst(pool, 2)
    pool.retire()
    clock.now += 1
    pool.retire()
    assert pool.opened() == 4
    assert not any(c.dbapi_connection.closed for c in held)
    for c in held:
        c.close()
    clock.now += 1
    pool.retire()
    assert pool.opened() == 1


def test_oldest_idle_is_retired_first():
    clock = Clock()
    pool, created = make(DjangoQueuePool, pool_size=4, max_overflow=0, core_pool_size=1,
                         retire_interval=1, retire_quantity=1, clock=clock, use_lifo=True)
    conns = [pool.connect() for _ in range(4)]
    for c in conns:  # returned in order: created[0] has been idle longest
        clock.now += 1
        c.close()
    pool.retire()
    clock.now += 1
    pool.retire()
    assert created[0].closed and not any(c.closed for c in created[1:])


def test_options_may_be_callables_evaluated_when_used():
    clock = Clock()
    core = {"n": 5}
    pool, _ = make(DjangoQueuePool, pool_size=8, max_overflow=0, core_pool_size=lambda: core["n"],
                   retire_interval=lambda: 1, retire_quantity=lambda: 8, clock=clock)
    burst(pool, 8)
    pool.retire()
    clock.now += 1
    pool.retire()
    assert pool.opened() == 5
    core["n"] = 2
    clock.now += 1
    pool.retire()
    assert pool.opened() == 2
    assert pool.core_size() == 2


def test_unload_timeout_waits_for_a_returned_connection_instead_of_opening():
    pool, created = make(DjangoQueuePool, pool_size=10, max_overflow=0, core_pool_size=2,
                         unload_timeout=5, timeout=10)
    a, b = pool.connect(), pool.connect()
    got = []
    t = threading.Thread(target=lambda: got.append(pool.connect()))
    t.start()
    wait_until(lambda: pool.waiting() == 1)  # waiting, not opening a third
    assert len(created) == 2
    a.close()
    t.join(10)
    assert got[0].dbapi_connection is created[0]
    assert len(created) == 2
    got[0].close()
    b.close()


def test_unload_timeout_then_opens_a_new_connection():
    pool, created = make(DjangoQueuePool, pool_size=10, max_overflow=0, core_pool_size=1,
                         unload_timeout=0.05, timeout=10)
    a = pool.connect()
    b = pool.connect()  # nobody returns one within 0.05 s: a new one opens
    assert len(created) == 2 and pool.counters.timeouts == 0
    a.close()
    b.close()


def test_threadlocal_affinity_with_fakes():
    pool, created = make(pool_size=3, max_overflow=0, use_threadlocal=True)
    conns = [pool.connect() for _ in range(3)]
    for c in conns:
        c.close()
    # FIFO would hand out created[0]; this thread last used created[2].
    again = pool.connect()
    assert again.dbapi_connection is created[2]
    again.close()
    seen = []
    t = threading.Thread(target=lambda: seen.append(pool.connect().dbapi_connection))
    t.start()
    t.join(10)
    assert seen[0] is created[0]  # another thread has no affinity: FIFO


def test_leak_detection_logs_the_checkout_stack_once(caplog):
    clock = Clock()
    pool, _ = make(pool_size=2, max_overflow=0, leak_detection_threshold=30, clock=clock, name="jobs")
    held = pool.connect()
    quick = pool.connect()
    quick.close()
    clock.now += 29
    assert pool.report_long_checkouts() == 0
    clock.now += 2
    with caplog.at_level("WARNING", logger="autopool"):
        assert pool.report_long_checkouts() == 1
        assert pool.report_long_checkouts() == 0  # once per checkout
    message = caplog.records[-1].getMessage()
    assert "'jobs'" in message and "31.0 s" in message
    assert "test_leak_detection_logs_the_checkout_stack_once" in message
    held.close()
