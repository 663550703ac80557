"""The core drop-in against the real MariaDB: checkout, return, reuse, safety."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from unittest import mock

import pytest
from django.db import Error, OperationalError, connection, connections, transaction
from django.db.transaction import TransactionManagementError

import autopool
from autopool import registry
from tests import djsettings
from tests.conftest import connection_id
from tests.scenario_main import wait_until
from tests.testapp.models import Row


def pool_of(alias="default"):
    found = list(registry.entries(alias))
    assert len(found) == 1, found
    return found[0].pool


def test_connection_is_reused_across_requests(server):
    ids = set()
    for _ in range(20):
        ids.add(connection_id())
        connection.close()
    assert len(ids) == 1
    pool = pool_of()
    assert pool.checkedout() == 0
    assert pool.checkedin() >= 1


def test_reuse_across_threads_never_exceeds_the_pool(server):
    """15 threads want a connection at once from a pool of 5 + 5 overflow: 10 get one, 5 wait,
    and the server never sees more than 10 sessions of the pool."""
    threads_n, cap = 15, 5 + 5  # DEFAULT_POOL: pool_size 5 + max_overflow 5
    release = threading.Event()
    ids, errors = [], []

    def work():
        try:
            ids.append(connection_id())
            release.wait(30)
            connection.close()
        except BaseException as exc:  # reported below with the others
            errors.append(exc)
            raise
        finally:
            connections.close_all()

    connection_id()  # the pool exists before the threads race for it
    connection.close()
    pool = pool_of()
    user, db = connections["default"].settings_dict["USER"], connections["default"].settings_dict["NAME"]

    def server_sessions():
        return server.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s AND DB = %s",
                              (user, db))[0][0]

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: pool.checkedout() == cap and pool.waiting() == threads_n - cap, timeout=20,
                   message=f"{cap} threads holding a connection and {threads_n - cap} waiting")
        assert pool.opened() == cap
        wait_until(lambda: server_sessions() == cap, message=f"{cap} server sessions")  # the server may lag
        assert pool.opened() == pool.checkedout() == cap
    finally:
        release.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(ids) == threads_n and len(set(ids)) == cap  # the waiters got returned connections
    assert pool.checkedout() == 0 and pool.waiting() == 0
    assert pool.checkedin() <= 5  # overflow closed on return
    # A closed session leaves the server's process list a moment after its COM_QUIT.
    wait_until(lambda: server_sessions() == pool.checkedin(), message="only the pooled sessions left on the server")


def test_alias_without_pool_is_stock(server):
    first = connection_id("stock")
    connections["stock"].close()
    second = connection_id("stock")
    connections["stock"].close()
    assert first != second
    assert list(registry.entries("stock")) == []


def test_orm_work_through_the_pool(server):
    Row.objects.all().delete()
    Row.objects.create(value=1)
    connection.close()
    assert Row.objects.filter(value=1).count() == 1
    connection.close()
    Row.objects.all().delete()


def test_uncommitted_writes_are_rolled_back_on_return(server):
    Row.objects.all().delete()
    connection.set_autocommit(False)
    Row.objects.create(value=42)
    connection.close()  # returned: must be rolled back, not committed
    assert not Row.objects.filter(value=42).exists()
    assert not Row.objects.using("stock").filter(value=42).exists()
    assert pool_of().counters.rollbacks_on_return >= 1


def test_raw_start_transaction_is_rolled_back_on_return(server):
    Row.objects.all().delete()
    connection.close()
    with connection.cursor() as cur:
        cur.execute("START TRANSACTION")
        cur.execute("INSERT INTO testapp_row (value, note) VALUES (7, '')")
    connection.close()
    assert not Row.objects.filter(value=7).exists()
    # and with the writes gone, the next user's commit cannot publish them
    with transaction.atomic():
        Row.objects.create(value=8)
    assert list(Row.objects.values_list("value", flat=True)) == [8]
    Row.objects.all().delete()


def test_clean_connection_costs_no_rollback(server):
    connection_id()
    connection.close()
    before = pool_of().counters.rollbacks_on_return
    for _ in range(5):
        connection_id()
        connection.close()
    assert pool_of().counters.rollbacks_on_return == before


def test_close_inside_atomic_really_closes(server):
    Row.objects.all().delete()
    connection.close()
    outer = None
    with pytest.raises(TransactionManagementError, match="until the end of the 'atomic' block"):
        with transaction.atomic():
            Row.objects.create(value=99)
            outer = connection_id()
            connection.close()
            Row.objects.create(value=100)  # the connection is gone
    connection.close()
    assert connection_id() != outer
    assert not Row.objects.filter(value__in=[99, 100]).exists()


def close_after_private_close(alias):
    """What ``close()`` does after ``_close()`` on ``alias``: the driver's closed-connection error
    (as Django's ``Error``, type and args) or None."""
    connection_id(alias)
    conn = connections[alias]
    conn._close()  # Django's tests emulate a server-side disconnect so
    assert not conn.is_usable()
    try:
        conn.close()
        outcome = None
    except Error as exc:  # compared with stock Django's below: no error is swallowed
        outcome = (type(exc), exc.args)
    assert conn.connection is None
    return outcome


def is_gevent_patched():
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("socket")


def test_private_close_really_closes(server):
    stock = close_after_private_close("stock")
    assert stock is not None  # mysqlclient: OperationalError(2006); PyMySQL: Error("Already closed")
    if djsettings.DRIVER == "mysqlclient" and is_gevent_patched():
        # mysqlclient under gevent: autopool's cooperative connection closes idempotently.
        assert close_after_private_close("default") is None
    else:
        assert close_after_private_close("default") == stock  # the same error as stock Django
    connection_id()  # a fresh connection works
    assert pool_of().checkedout() == 1
    connection.close()
    assert pool_of().checkedout() == 0


@pytest.mark.parametrize("failure", ["server_killed_the_session", "is_usable_replaced"])
def test_failed_health_check_gets_a_different_connection(server, failure):
    settings = connections["default"].settings_dict
    with mock.patch.dict(settings, {"CONN_MAX_AGE": None, "CONN_HEALTH_CHECKS": True}):
        cid = connection_id()
        old = connection.connection
        connection.close_if_unusable_or_obsolete()  # next request: a check is due, and passes
        assert connection_id() == cid and connection.connection is old
        if failure == "server_killed_the_session":
            server.execute(f"KILL {cid}")
            check = contextlib.nullcontext()
        else:  # as Django's own ConnectionHealthChecksTests do
            check = mock.patch.object(connection, "is_usable", return_value=False)
        connection.close_if_unusable_or_obsolete()
        with check:
            assert connection_id() != cid
            assert connection.connection is not old
        connection.close()
    assert old not in [rec.dbapi_connection for rec, _ in pool_of()._idle]  # never pooled


def test_errors_then_unusable_connection_is_invalidated(server):
    cid = connection_id()
    server.execute(f"KILL {cid}")
    with pytest.raises(OperationalError) as info:
        connection_id()
    assert info.value.args[0] in (2006, 2013), info.value.args  # gone away / lost during the query
    assert connection.errors_occurred
    connection.close_if_unusable_or_obsolete()
    assert connection.connection is None
    assert connection_id() != cid
    connection.close()
    assert pool_of().counters.connections_invalidated >= 1


def test_changed_parameters_get_their_own_pool(server):
    server.create_database("autopool_test_b")
    try:
        first = pool_of()
        with mock.patch.dict(connections["default"].settings_dict, {"NAME": "autopool_test_b"}):
            connection.close()
            with connection.cursor() as cur:
                cur.execute("SELECT DATABASE()")
                assert cur.fetchone()[0] == "autopool_test_b"
            connection.close()
            second = pool_of()
            assert second is not first
            assert first.closed  # the stale pool is closed
        with connection.cursor() as cur:
            cur.execute("SELECT DATABASE()")
            assert cur.fetchone()[0] == "autopool_test"
        connection.close()
    finally:
        server.execute("DROP DATABASE IF EXISTS autopool_test_b")


def test_two_aliases_never_share_connections(server):
    with connections["default"].cursor() as cur:
        cur.execute("SELECT CONNECTION_ID(), CURRENT_USER(), DATABASE()")
        a = cur.fetchone()
    with connections["other"].cursor() as cur:
        cur.execute("SELECT CONNECTION_ID(), CURRENT_USER(), DATABASE()")
        b = cur.fetchone()
    assert a[0] != b[0]
    assert a[1].startswith(connections["default"].settings_dict["USER"] + "@")
    assert b[1].startswith(connections["other"].settings_dict["USER"] + "@")
    assert (a[2], b[2]) == ("autopool_test", "autopool_other")


def session_status(names=("Questions", "Com_set_option")):
    """This session's own counters, read by the server: statements it received on this connection."""
    with connection.cursor() as cur:
        cur.execute("SHOW SESSION STATUS WHERE Variable_name IN (%s)" % ", ".join(["%s"] * len(names)), names)
        return {name: int(value) for name, value in cur.fetchall()}


def test_session_setup_runs_once_per_physical_connection(server):
    """Django's set-up (SET autocommit, SET SESSION TRANSACTION ISOLATION LEVEL) runs when a
    connection is opened, not at each checkout: counted by the server, per session."""
    cid = connection_id()
    before = session_status()
    connection.close()
    in_thread = []

    def checkout_in_a_new_thread():  # a new DatabaseWrapper on the same pooled connection
        try:
            in_thread.append((connection_id(), session_status()))
        finally:
            connections.close_all()

    t = threading.Thread(target=checkout_in_a_new_thread)
    t.start()
    t.join(30)
    assert not t.is_alive()
    (thread_cid, in_thread_status), = in_thread
    connection.ensure_connection()
    connection.close()
    assert connection_id() == thread_cid == cid  # the same server session every time
    after = session_status()
    # Between two reads: the other two reads (SHOW STATUS and SELECT CONNECTION_ID()), nothing else.
    assert in_thread_status["Com_set_option"] == after["Com_set_option"] == before["Com_set_option"]
    assert in_thread_status["Questions"] - before["Questions"] == 2
    assert after["Questions"] - in_thread_status["Questions"] == 2
    # ... and a new physical connection does run it: the counter sees what it is meant to see.
    connection.close()
    autopool.dispose("default")
    fresh = session_status()
    assert connection_id() != cid and fresh["Com_set_option"] >= 1
    connection.close()


def test_install_is_idempotent_and_uninstall_restores_stock(server):
    from django.db.backends.mysql import base

    from autopool import patch

    assert autopool.is_installed()
    wrapped = base.DatabaseWrapper.__dict__["get_new_connection"]
    autopool.install()
    assert base.DatabaseWrapper.__dict__["get_new_connection"] is wrapped
    original = wrapped.__wrapped__
    connection_id()
    connection.close()
    autopool.uninstall()
    try:
        assert not autopool.is_installed()
        assert base.DatabaseWrapper.__dict__["get_new_connection"] is original
        assert "close" not in base.DatabaseWrapper.__dict__  # inherited again
        assert list(registry.entries()) == []
        first = connection_id()
        connection.close()
        assert connection_id() != first  # stock: a new connection per close
        connection.close()
        autopool.uninstall()  # idempotent
    finally:
        autopool.install()
    assert patch.is_applied()
    first = connection_id()
    connection.close()
    assert connection_id() == first


def test_install_before_or_after_backend_import(tmp_path, server):
    script = """
import sys, autopool
import django
from django.conf import settings
first = sys.argv[1] == "before"
if first:
    autopool.install()
settings.configure(DATABASES={"default": {"ENGINE": "django.db.backends.mysql", "NAME": "autopool_test",
    "USER": %(user)r, "PASSWORD": %(password)r, "HOST": %(host)r, "PORT": %(port)r, "POOL": {"pool_size": 1}}})
django.setup()
from django.db import connection
connection.ensure_connection()
if not first:
    autopool.install()
    connection.close()
ids = set()
for _ in range(3):
    with connection.cursor() as c:
        c.execute("SELECT CONNECTION_ID()")
        ids.add(c.fetchone()[0])
    connection.close()
print(len(ids))
""" % dict(user=server.user, password=server.password, host=server.host, port=str(server.port))
    path = tmp_path / "probe.py"
    path.write_text(script)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    for when in ("before", "after"):
        out = subprocess.run([sys.executable, str(path), when], capture_output=True, text=True, env=env,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "1", (when, out.stdout, out.stderr)


def test_switch_off_by_setting_and_environment(server, monkeypatch):
    from django.test import override_settings

    autopool.dispose()
    with override_settings(AUTOPOOL_ENABLED=False):
        a = connection_id()
        connection.close()
        b = connection_id()
        connection.close()
        assert a != b
        assert list(registry.entries()) == []
    monkeypatch.setenv("AUTOPOOL_ENABLED", "0")
    from autopool import hooks

    hooks.reset_enabled_cache()
    with override_settings(AUTOPOOL_ENABLED=True):  # the environment wins
        a = connection_id()
        connection.close()
        assert connection_id() != a
        connection.close()
        assert list(registry.entries()) == []
    monkeypatch.delenv("AUTOPOOL_ENABLED")
    hooks.reset_enabled_cache()
    a = connection_id()
    connection.close()
    assert connection_id() == a


def test_pre_ping_without_a_dialect_replaces_killed_connections(server):
    settings = connections["default"].settings_dict
    for key in ("pre_ping", "django_pre_ping"):
        with mock.patch.dict(settings, {"POOL": {"pool_size": 2, key: True}}):
            connection.close()
            cid = connection_id()
            connection.close()
            server.execute(f"KILL {cid}")
            assert connection_id() != cid  # transparently replaced
            connection.close()
    connection.close()


def test_use_threadlocal_gives_a_thread_its_own_connection_back(server):
    settings = connections["default"].settings_dict
    with mock.patch.dict(settings, {"POOL": {"pool_size": 4, "use_threadlocal": True, "use_lifo": False}}):
        connection.close()
        got = {}
        ready = threading.Barrier(3)

        def work(name):
            try:
                ids = []
                ready.wait(10)  # all three connections exist at once
                ids.append(connection_id())
                ready.wait(10)
                connection.close()
                ready.wait(10)
                for _ in range(5):
                    ids.append(connection_id())
                    connection.close()
                got[name] = ids
            finally:
                connections.close_all()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(got) == 3
        for ids in got.values():
            assert len(set(ids)) == 1, ids
    connection.close()
