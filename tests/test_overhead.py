"""Server commands per request on a warm pool, counted by the server itself, per session."""
from __future__ import annotations

from unittest import mock

import pytest
from django.db import connection, connections

from autopool import registry
from tests.testapp.models import Row

N = 25
COUNTERS = ("Questions", "Com_admin_commands")


class ServerCounters:
    """The server's own counters of one pooled session, read through that session itself, so that
    no other client's traffic counts. Every request of a test must run on that one session (one
    thread at a time on a LIFO pool): ``delta`` checks it by CONNECTION_ID() and the pool's opens.

    The reads themselves are known: the closing read's SELECT CONNECTION_ID() and SHOW STATUS
    (two statements) are subtracted, plus what the opening read's return or the closing read's
    checkout costs (``per_checkout``: a ping or a rollback-on-return)."""

    def read(self):
        with connection.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            cid = cur.fetchone()[0]
            cur.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Questions', 'Com_admin_commands')")
            return cid, {k: int(v) for k, v in cur.fetchall()}

    def delta(self, fn, per_checkout=0):
        cid, before = self.read()
        connection.close()
        opened = pool_of().counters.connections_opened
        fn()
        after_cid, after = self.read()
        connection.close()
        assert after_cid == cid, "the requests did not all run on the one measured session"
        assert pool_of().counters.connections_opened == opened
        d = {k: after[k] - before[k] for k in COUNTERS}
        # Questions leaves out pings; Com_admin_commands counts them.
        d["commands"] = d["Questions"] + d["Com_admin_commands"] - 2 - per_checkout
        d["Connections"] = 0  # the same session before and after: nothing reconnected
        return d


def pool_of(alias="default"):
    (entry,) = registry.entries(alias)
    return entry.pool


@pytest.fixture
def counters(server):
    return ServerCounters()


def requests(n=N):
    def run():
        for _ in range(n):
            Row.objects.filter(pk=1).first()
            connection.close()
    return run


def warm():
    requests(3)()


def test_one_query_requests_cost_one_command_each(counters):
    warm()
    d = counters.delta(requests())
    assert d["Connections"] == 0
    assert d["commands"] == N, d


def test_new_threads_reuse_session_setup_too(counters):
    """A new DatabaseWrapper (a new thread or greenlet) on a pooled connection
    runs neither Django's session set-up nor its server-version query again."""
    import threading

    warm()

    def in_fresh_threads():
        for _ in range(N):
            t = threading.Thread(target=lambda: (Row.objects.filter(pk=1).first(), connections.close_all()))
            t.start()
            t.join(10)

    d = counters.delta(in_fresh_threads)
    assert d["Connections"] == 0
    assert d["commands"] == N, d


def test_transactions_cost_no_extra_rollback(counters):
    from django.db import transaction

    warm()

    def atomic_requests():
        for _ in range(N):
            with transaction.atomic():
                Row.objects.filter(pk=1).first()
            connection.close()

    d = counters.delta(atomic_requests)
    # SET autocommit=0, SELECT, COMMIT, SET autocommit=1: Django's own four, no ROLLBACK on return.
    assert d["commands"] == 4 * N, d


@pytest.mark.parametrize("option", [{"pre_ping": True}, {"django_pre_ping": True},
                                    {"reset_on_return": "rollback"}])
def test_options_that_cost_a_round_trip_cost_exactly_one(counters, option):
    setting = dict(connections["default"].settings_dict["POOL"], **option)
    with mock.patch.dict(connections["default"].settings_dict, {"POOL": setting}):
        connection.close()
        warm()
        d = counters.delta(requests(), per_checkout=1)
    connection.close()
    registry.dispose("default")
    assert d["Connections"] == 0
    assert d["commands"] == 2 * N, d
