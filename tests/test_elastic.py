"""DjangoQueuePool on the real server: a burst opens connections, idleness retires them."""
from __future__ import annotations

import threading
import time
from unittest import mock

import pytest
from django.db import connection, connections

from autopool import registry

DB = "autopool_elastic"


@pytest.fixture
def elastic(server):
    server.create_database(DB)
    pool = {"django_pool_class": "autopool.pool.DjangoQueuePool", "pool_size": 8, "max_overflow": 0,
            "django_core_pool_size": 2, "django_retire_interval": 0.2, "django_retire_quantity": 1,
            "timeout": 10}
    with mock.patch.dict(connections["default"].settings_dict, {"NAME": DB, "POOL": pool}):
        connection.close()
        yield server
        connection.close()
        registry.dispose("default")
    server.execute(f"DROP DATABASE IF EXISTS {DB}")


def server_count(server):
    return int(server.execute(f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{DB}'")[0][0])


def hold(n, release):
    """n threads each holding a connection until ``release`` is set."""
    ready = threading.Barrier(n + 1)

    def work():
        try:
            connection.ensure_connection()
            ready.wait(10)
            release.wait(10)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    ready.wait(10)
    return threads


def poll(predicate, timeout=10.0, interval=0.02):
    samples = []
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        samples.append(value)
        if value is True or (isinstance(value, tuple) and value[0]):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached; last samples {samples[-5:]}")
        time.sleep(interval)


def test_burst_then_gradual_retirement_to_core(elastic):
    release = threading.Event()
    threads = hold(8, release)
    assert server_count(elastic) == 8  # the burst opened up to the pool's maximum
    release.set()
    for t in threads:
        t.join(10)
    pool = next(registry.entries("default")).pool
    assert pool.checkedin() == 8  # kept pooled, not closed on return

    counts = []

    def stepped_down():
        counts.append(server_count(elastic))
        return (counts[-1] == 2 and pool.opened() == 2,)

    poll(stepped_down)
    # Steps of one connection per round, never below core.
    assert min(counts) == 2
    assert all(b <= a for a, b in zip(counts, counts[1:]))
    assert all(a - b <= 1 for a, b in zip(counts, counts[1:])), counts
    # ... and it stays at core.
    settle = time.monotonic() + 0.6
    while time.monotonic() < settle:
        assert server_count(elastic) == 2
        time.sleep(0.05)


def test_with_max_overflow_a_burst_up_to_the_cap_stays_then_retires_to_pool_size(server):
    # DjangoQueuePool with max_overflow > 0: the burst's overflow connections
    # are kept on return (not closed as QueuePool's are), then retired one per
    # round down to pool_size (the default core).
    server.create_database(DB)
    pool = {"django_pool_class": "autopool.pool.DjangoQueuePool", "pool_size": 2, "max_overflow": 4,
            "django_retire_interval": 0.2, "django_retire_quantity": 1, "timeout": 10}
    try:
        with mock.patch.dict(connections["default"].settings_dict, {"NAME": DB, "POOL": pool}):
            connection.close()
            release = threading.Event()
            threads = hold(6, release)
            assert server_count(server) == 6
            release.set()
            for t in threads:
                t.join(10)
            entry = next(registry.entries("default"))
            counters = entry.pool.counters
            # All kept on return: whatever closed since is retirement (a round may already be due).
            assert counters.connections_closed == counters.connections_retired
            assert entry.pool.opened() + counters.connections_retired == 6
            counts = []

            def stepped_down():
                counts.append(server_count(server))
                return (counts[-1] == 2 and entry.pool.opened() == 2,)

            poll(stepped_down)
            assert all(a >= b for a, b in zip(counts, counts[1:])), counts
            assert counters.connections_retired == counters.connections_closed == 4
            connection.close()
            registry.dispose("default")
    finally:
        server.execute(f"DROP DATABASE IF EXISTS {DB}")


def test_connections_in_use_are_never_retired(elastic):
    release = threading.Event()
    threads = hold(8, release)
    try:
        pool = next(registry.entries("default")).pool
        # Rounds come and go while all eight are checked out: nothing to retire.
        rounds = pool.counters.connections_retired
        deadline = time.monotonic() + 0.7
        while time.monotonic() < deadline:
            assert server_count(elastic) == 8
            time.sleep(0.05)
        assert pool.counters.connections_retired == rounds
    finally:
        release.set()
        for t in threads:
            t.join(10)


def test_unload_timeout_absorbs_a_small_burst_without_opening(elastic):
    pool_setting = dict(connections["default"].settings_dict["POOL"], django_unload_timeout=5,
                        django_retire_interval=60)
    with mock.patch.dict(connections["default"].settings_dict, {"POOL": pool_setting}):
        connection.close()
        release = threading.Event()
        threads = hold(2, release)  # core (2) checked out
        pool = next(registry.entries("default")).pool
        opened = pool.counters.connections_opened
        got = []

        def third():
            try:
                got.append(connection.ensure_connection() or True)
            finally:
                connections.close_all()

        t = threading.Thread(target=third)
        t.start()
        poll(lambda: pool.waiting() == 1)  # it waits instead of opening a third
        release.set()  # the core connections come back within the unload timeout
        t.join(10)
        for h in threads:
            h.join(10)
        assert got == [True]
        assert pool.counters.connections_opened == opened
        assert server_count(elastic) == 2
