"""Server commands per request on a warm pool, counted by the server itself."""
from __future__ import annotations

from unittest import mock

import pytest
from django.db import connection, connections

from autopool import registry
from tests.testapp.models import Row

N = 25
COUNTERS = ("Questions", "Com_admin_commands", "Connections")


class ServerCounters:
    """Global status read from a side connection; its own reads are subtracted."""

    def __init__(self, server):
        self.side = server.admin_connect()
        self.cur = self.side.cursor()

    def read(self):
        self.cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN "
                         "('Questions', 'Com_admin_commands', 'Connections')")
        return {k: int(v) for k, v in self.cur.fetchall()}

    def delta(self, fn):
        before = self.read()
        fn()
        after = self.read()
        d = {k: after[k] - before[k] for k in COUNTERS}
        d["Questions"] -= 1  # the SHOW STATUS that read ``after``
        # Questions leaves out pings; Com_admin_commands counts them.
        d["commands"] = d["Questions"] + d["Com_admin_commands"]
        return d

    def close(self):
        self.side.close()


@pytest.fixture
def counters(server):
    c = ServerCounters(server)
    yield c
    c.close()


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
        d = counters.delta(requests())
    connection.close()
    registry.dispose("default")
    assert d["Connections"] == 0
    assert d["commands"] == 2 * N, d
