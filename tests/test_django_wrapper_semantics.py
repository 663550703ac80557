"""DatabaseWrapper patterns from Django's own test suite that the pool must respect.

Found while running Django's suite under autopool (tests/djangosuite/run.py):

* ``copy.copy(connection)`` (Django's ``backends`` tests build test connections so) shares
  the original wrapper's DB-API connection. Closing the copy must not pool a connection
  that the original still uses.
* ``inc_thread_sharing()`` lets another thread use (and first open) a wrapper's connection;
  the abandoned-connection scan must not take it from the wrapper when that thread ends.
"""
from __future__ import annotations

import copy
import threading

from django.db import connection, connections

from autopool import registry
from tests.conftest import connection_id


def pool_of(alias="default"):
    found = list(registry.entries(alias))
    assert len(found) == 1, found
    return found[0].pool


def test_closing_a_shallow_copy_never_pools_the_shared_connection(server):
    original = connection_id()
    wrapper = connections["default"]  # django.db.connection is a proxy: copy the wrapper itself
    clone = copy.copy(wrapper)
    clone.close()
    # As stock Django: the copy closed the one DB-API connection both wrappers hold ...
    assert not wrapper.is_usable()
    # ... and no other checkout is handed the original's session.
    other = wrapper.copy()
    try:
        with other.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            assert cur.fetchone()[0] != original
    finally:
        other.close()
    # Stock Django raises here (the driver's "already closed" error); autopool's close() sees that
    # the lease went with the copy and only forgets the connection: no error, nothing pooled.
    wrapper.close()
    assert wrapper.connection is None
    assert pool_of().checkedout() == 0
    connection_id()
    connection.close()
    assert pool_of().checkedout() == 0


def test_connection_first_opened_by_a_sharing_thread_outlives_that_thread(server):
    main = connections["default"]
    main.inc_thread_sharing()
    try:
        seen = []

        def work():
            connections["default"] = main  # as Django's ThreadTests pass a connection on
            seen.append(connection_id())

        t = threading.Thread(target=work)
        t.start()
        t.join(10)
        assert not t.is_alive() and len(seen) == 1
        assert pool_of().reclaim_abandoned() == 0  # what the housekeeper runs every second
        assert connection_id() == seen[0]
    finally:
        main.dec_thread_sharing()
    assert pool_of().reclaim_abandoned() == 0  # the home (main) thread is alive
    connection.close()
    assert pool_of().checkedout() == 0


def test_connection_of_an_ended_thread_is_still_reclaimed(server):
    kept = []

    def work():
        conn = connections["default"]
        kept.append(conn)  # the wrapper outlives its thread: only the thread's end tells
        with conn.cursor() as cur:
            cur.execute("SELECT 1")

    t = threading.Thread(target=work)
    t.start()
    t.join(10)
    assert not t.is_alive() and len(kept) == 1
    assert pool_of().checkedout() == 1
    assert pool_of().reclaim_abandoned() == 1
    assert pool_of().checkedout() == 0
    kept[0].inc_thread_sharing()
    kept[0].close()  # a late close() of the reclaimed lease is a no-op, not an error
    kept[0].dec_thread_sharing()
    assert pool_of().checkedout() == 0
