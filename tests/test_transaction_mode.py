"""``POOL["pool_mode"] = "transaction"`` against the real MariaDB.

A connection goes back to the pool after each statement outside atomic()
and with autocommit on; held inside atomic(), after set_autocommit(False),
inside autopool.pinned() and while a result is still on the connection.
Runs on both drivers, and under gevent (``python -m gevent.monkey --module
pytest``: the threads below are then greenlets).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, OperationalError, ProgrammingError, connections, transaction
from django.db.backends.signals import connection_created

import autopool
from autopool import config, registry, txmode
from tests.testapp.models import Row

ALIAS = "tx"


@contextlib.contextmanager
def alias(server: Any, name: str = ALIAS, **pool: Any) -> Iterator[Any]:
    """A temporary alias on the test database in transaction mode."""
    entry = copy.deepcopy(connections.settings["default"])
    entry.update(HOST=server.host, PORT=str(server.port), USER=server.user, PASSWORD=server.password,
                 POOL=dict({"pool_size": 2, "max_overflow": 0, "timeout": 20, "pool_mode": "transaction"},
                           **pool))
    connections.settings[name] = entry
    try:
        yield connections[name]
    finally:
        wrapper = connections[name]
        if wrapper.in_atomic_block:
            wrapper.needs_rollback = True
        wrapper.close()
        del connections[name]
        del connections.settings[name]
        autopool.dispose(name)


@pytest.fixture
def tx(server: Any) -> Iterator[Any]:
    with alias(server) as wrapper:
        yield wrapper


def pool_of(name: str = ALIAS) -> Any:
    found = list(registry.entries(name))
    assert len(found) == 1, found
    return found[0].pool


def one(wrapper: Any, sql: str, params: Any = None) -> Any:
    with wrapper.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def cid(wrapper: Any) -> int:
    return one(wrapper, "SELECT CONNECTION_ID()")[0]


def run_threads(n: int, target: Any) -> list[BaseException]:
    """Run ``target(i)`` in ``n`` threads (greenlets under gevent); return their exceptions."""
    errors: list[BaseException] = []

    def main(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # collected and asserted by the caller
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=main, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a worker did not finish"
    return errors


def test_bad_pool_mode_is_improperly_configured() -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        config.parse("default", {"pool_mode": "statement"})
    message = str(info.value)
    assert "DATABASES['default']['POOL']['pool_mode']" in message
    assert "'request'" in message and "'transaction'" in message
    with pytest.raises(ImproperlyConfigured, match=r"\['session_state_guard'\].*'warn', 'error', None"):
        config.parse("default", {"session_state_guard": "loud"})
    assert config.parse("default", {}).pool_mode == "request"


def test_request_mode_is_untouched(server: Any) -> None:
    """The default alias (request mode) keeps its connection between statements."""
    wrapper = connections["default"]
    first = cid(wrapper)
    assert cid(wrapper) == first
    assert wrapper.connection is not None
    assert txmode.TX not in wrapper.__dict__
    assert type(wrapper.cursor()).__name__ == "CursorWrapper"


def test_connection_goes_back_after_each_statement(tx: Any) -> None:
    pool_size = 2
    cid(tx)
    pool = pool_of()
    assert pool.checkedout() == 0
    assert tx.connection is None
    ids = {cid(tx) for _ in range(10)}
    assert pool.checkedout() == 0
    assert len(ids) <= pool_size
    # A cursor spans statements: each one re-attaches a pooled connection.
    with tx.cursor() as cur:
        for i in range(3):
            cur.execute("SELECT %s", [i])
            assert cur.fetchone() == (i,)
            assert pool.checkedout() == 0


def test_many_concurrent_requests_share_few_sessions(server: Any) -> None:
    """20 workers each run a query, then all wait for each other, then run another query: with 2
    connections that can only finish if the connections went back between the statements."""
    n = 20
    autopool.dispose("default")  # only this test's sessions on the database
    with alias(server, pool_size=2, max_overflow=0) as tx:
        cid(tx)
        sessions_before = server.execute("SHOW GLOBAL STATUS LIKE 'Connections'")[0][1]
        user, db = tx.settings_dict["USER"], tx.settings_dict["NAME"]
        sessions_at_barrier: list[int] = []

        def count_sessions() -> None:  # run by one worker once all 20 are between their queries
            sessions_at_barrier.append(server.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s AND DB = %s",
                (user, db))[0][0])

        between = threading.Barrier(n, action=count_sessions, timeout=30)
        seen: list[int] = []

        def request(i: int) -> None:
            w = connections[ALIAS]
            seen.append(cid(w))
            between.wait()
            Row.objects.using(ALIAS).filter(pk=-1).exists()
            seen.append(cid(w))
            w.close()

        assert run_threads(n, request) == []
        assert len(seen) == 2 * n and len(set(seen)) <= 2
        pool = pool_of()
        assert pool.checkedout() == 0 and pool.opened() <= 2
        sessions_after = server.execute("SHOW GLOBAL STATUS LIKE 'Connections'")[0][1]
        # The first cid() above opened the pool's first connection: at most one more, plus the
        # admin connections of the two server.execute() calls after the first reading.
        assert int(sessions_after) - int(sessions_before) <= 1 + 2
        assert sessions_at_barrier and sessions_at_barrier[0] <= 2


def test_atomic_holds_one_connection(tx: Any) -> None:
    with transaction.atomic(using=ALIAS):
        first = cid(tx)
        Row.objects.using(ALIAS).create(value=7)
        assert cid(tx) == first
        pool = pool_of()
        assert pool.checkedout() == 1
        with transaction.atomic(using=ALIAS):  # a savepoint: still the same connection
            assert cid(tx) == first
    assert pool.checkedout() == 0
    assert tx.connection is None
    assert Row.objects.using(ALIAS).filter(value=7).exists()
    Row.objects.using(ALIAS).filter(value=7).delete()


def test_atomic_rollback_leaves_nothing(tx: Any) -> None:
    with pytest.raises(ZeroDivisionError):
        with transaction.atomic(using=ALIAS):
            Row.objects.using(ALIAS).create(value=8)
            1 / 0
    assert pool_of().checkedout() == 0
    assert not Row.objects.using(ALIAS).filter(value=8).exists()


def test_set_autocommit_false_holds_until_turned_back_on(tx: Any) -> None:
    cid(tx)
    pool = pool_of()
    tx.set_autocommit(False)
    try:
        first = cid(tx)
        Row.objects.using(ALIAS).create(value=9)
        assert cid(tx) == first and pool.checkedout() == 1
        tx.rollback()
        assert cid(tx) == first and pool.checkedout() == 1
    finally:
        tx.set_autocommit(True)
    assert pool.checkedout() == 0
    assert not Row.objects.using(ALIAS).filter(value=9).exists()


def test_failed_statement_discards_its_connection(tx: Any) -> None:
    cid(tx)
    pool = pool_of()
    before = pool.counters.connections_invalidated
    with pytest.raises(ProgrammingError) as info:  # 1146: the table does not exist
        one(tx, "SELECT * FROM no_such_table_here")
    assert info.value.args[0] == 1146
    assert "no_such_table_here" in str(info.value)
    assert pool.checkedout() == 0
    assert pool.counters.connections_invalidated == before + 1
    assert tx.connection is None
    cid(tx)  # the next statement gets a working connection
    assert not tx.errors_occurred


def test_integrity_error_returns_a_clean_connection(tx: Any) -> None:
    row = Row.objects.using(ALIAS).create(value=10)
    pool = pool_of()
    before = pool.counters.connections_invalidated
    with pytest.raises(IntegrityError):
        Row.objects.using(ALIAS).create(pk=row.pk, value=11)
    assert pool.counters.connections_invalidated == before
    assert pool.checkedout() == 0
    Row.objects.using(ALIAS).filter(pk=row.pk).delete()


def test_killed_connection_is_discarded_and_replaced(tx: Any, server: Any) -> None:
    with tx.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        victim = cur.fetchone()[0]
    server.execute(f"KILL {victim}")
    seen = set()
    for _ in range(3):  # the killed one is found and dropped, never handed out twice
        try:
            seen.add(cid(tx))
        except OperationalError:
            pass
    assert seen and victim not in seen
    assert pool_of().checkedout() == 0


def test_stale_cursor_never_touches_the_next_owner(server: Any) -> None:
    with alias(server, "tx1", pool_size=1, max_overflow=0) as one_conn:
        cur = one_conn.cursor()
        cur.execute("SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3")
        dbapi = cur.cursor.cursor
        assert dbapi.connection is None  # detached: its connection went back
        # Another request (thread) now holds the only connection, mid-result.
        got: list[Any] = []
        other_ready, stale_done = threading.Event(), threading.Event()

        def other(i: int) -> None:
            w = connections["tx1"]
            with w.cursor() as c2:
                c2.execute("SELECT 10 UNION ALL SELECT 20")
                other_ready.set()
                assert stale_done.wait(30)
                got.extend(c2.fetchall())

        t = threading.Thread(target=lambda: errors.extend(run_threads(1, other)))
        errors: list[BaseException] = []
        t.start()
        assert other_ready.wait(30)
        assert cur.fetchone() == (1,)
        assert [tuple(r) for r in cur.fetchall()] == [(2,), (3,)]
        cur.close()  # must not read or discard anything on the other request's connection
        stale_done.set()
        t.join(60)
        assert errors == []
        assert [tuple(r) for r in got] == [(10,), (20,)]
        # The cursor object still works: it rebinds to a connection of its own.
        cur2 = one_conn.cursor()
        cur2.execute("SELECT 5")
        assert cur2.fetchone() == (5,)
        cur2.close()


def test_buffered_rows_survive_the_return(tx: Any) -> None:
    cur = tx.cursor()
    cur.execute("SELECT 1 UNION ALL SELECT 2")
    cur2 = tx.cursor()
    cur2.execute("SELECT 3")
    assert cur2.fetchall() in (((3,),), [(3,)])
    assert [tuple(r) for r in cur.fetchall()] == [(1,), (2,)]
    cur.close()
    cur2.close()


def test_orm_create_returns_the_right_pk_under_concurrency(server: Any) -> None:
    with alias(server, pool_size=2, max_overflow=0):
        created: list[Any] = []

        def request(i: int) -> None:
            for j in range(5):
                obj = Row.objects.using(ALIAS).create(value=1000 + i, note=f"w{i}-{j}")
                created.append((obj.pk, f"w{i}-{j}"))

        assert run_threads(8, request) == []
        assert len(created) == 40 and len({pk for pk, _ in created}) == 40
        notes = dict(Row.objects.using(ALIAS).filter(value__gte=1000).values_list("pk", "note"))
        assert notes == dict(created)
        Row.objects.using(ALIAS).filter(value__gte=1000).delete()


def test_queries_on_commit_and_health_checks_behave(server: Any) -> None:
    with alias(server) as tx:
        tx.force_debug_cursor = True
        tx.queries_log.clear()
        one(tx, "SELECT 42")
        one(tx, "SELECT 43")
        sqls = [q["sql"] for q in tx.queries]
        assert "SELECT 42" in sqls and "SELECT 43" in sqls
        tx.force_debug_cursor = False

        ran: list[int] = []
        transaction.on_commit(lambda: ran.append(1), using=ALIAS)  # autocommit: runs now
        assert ran == [1] and tx.connection is None  # no checkout just to answer get_autocommit()
        with transaction.atomic(using=ALIAS):
            Row.objects.using(ALIAS).create(value=12)
            transaction.on_commit(lambda: ran.append(Row.objects.using(ALIAS).filter(value=12).count()),
                                  using=ALIAS)
            assert ran == [1]
        assert ran == [1, 1]
        assert pool_of().checkedout() == 0
        Row.objects.using(ALIAS).filter(value=12).delete()
        tx.close_if_unusable_or_obsolete()  # parked: nothing to check, nothing raised
        assert tx.connection is None
    with alias(server, name="tx2") as tx2:
        tx2.settings_dict["CONN_HEALTH_CHECKS"] = True
        tx2.settings_dict["CONN_MAX_AGE"] = None
        cid(tx2)
        tx2.close_if_unusable_or_obsolete()
        assert cid(tx2)


def test_connection_created_runs_once_per_physical_connection_and_holds(server: Any) -> None:
    seen: list[int] = []

    def receiver(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.alias == ALIAS:
            with connection.cursor() as cur:
                cur.execute("SELECT CONNECTION_ID()")
                seen.append(cur.fetchone()[0])
            # still attached: the receiver's statement did not give it back
            assert connection.connection is not None

    connection_created.connect(receiver)
    try:
        with alias(server, pool_size=1) as tx:
            first = cid(tx)
            for _ in range(5):
                assert cid(tx) == first
            assert seen == [first]
    finally:
        connection_created.disconnect(receiver)


def test_pinned_holds_session_state(tx: Any) -> None:
    with autopool.pinned(ALIAS) as wrapper:
        assert wrapper is tx
        one(tx, "SET @autopool_pin = 5")
        first = cid(tx)
        assert one(tx, "SELECT @autopool_pin") == (5,)
        with autopool.pinned(ALIAS):
            assert cid(tx) == first
        assert cid(tx) == first
        assert pool_of().checkedout() == 1
    assert pool_of().checkedout() == 0


def test_session_state_guard(server: Any, caplog: Any) -> None:
    with alias(server) as tx:
        with caplog.at_level(logging.WARNING, logger="autopool"):
            one(tx, "SET @x = 1")
        assert any("pool_mode='transaction'" in r.getMessage() for r in caplog.records)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="autopool"):
            with transaction.atomic(using=ALIAS):
                one(tx, "SET @x = 1")  # inside a transaction: fine
            one(tx, "SELECT 1")
        assert not caplog.records
    with alias(server, name="txe", session_state_guard="error") as txe:
        with pytest.raises(autopool.SessionStateError):
            one(txe, "  set session sql_mode = ''")
        with pytest.raises(autopool.SessionStateError):
            one(txe, "SELECT GET_LOCK('a', 0)")
        assert pool_of("txe").checkedout() == 0
        with autopool.pinned("txe"):
            assert one(txe, "SELECT GET_LOCK('autopool_t', 0)") == (1,)
            assert one(txe, "SELECT RELEASE_LOCK('autopool_t')") == (1,)


def test_streaming_cursor_holds_until_closed(server: Any) -> None:
    import MySQLdb

    ss = MySQLdb.cursors.SSCursor
    with alias(server, name="txs") as txs:
        txs.settings_dict["OPTIONS"] = dict(txs.settings_dict["OPTIONS"], cursorclass=ss)
        cur = txs.cursor()
        cur.execute("SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3")
        assert pool_of("txs").checkedout() == 1  # rows still on the server: held
        assert cur.fetchone() == (1,)
        cur.close()
        assert pool_of("txs").checkedout() == 0
        assert cid(txs)


def test_raw_begin_holds_until_commit(tx: Any) -> None:
    """A transaction opened with raw SQL (the server says so in its reply) is held to its end."""
    cid(tx)
    pool = pool_of()
    with tx.cursor() as cur:
        cur.execute("START TRANSACTION")
        first = cid(tx)
        cur.execute("INSERT INTO testapp_row (value, note) VALUES (13, 'raw')")
        with pytest.raises(IntegrityError):  # a failed statement does not end it either
            cur.execute("INSERT INTO testapp_row (id, value, note) SELECT id, 13, 'dup' FROM testapp_row LIMIT 1")
        assert cid(tx) == first and pool.checkedout() == 1
        cur.execute("COMMIT")
    assert pool.checkedout() == 0
    assert Row.objects.using(ALIAS).filter(value=13, note="raw").count() == 1
    Row.objects.using(ALIAS).filter(value=13).delete()


def test_call_with_further_results_holds_until_closed(tx: Any) -> None:
    one(tx, "DROP PROCEDURE IF EXISTS autopool_two")
    one(tx, "CREATE PROCEDURE autopool_two() BEGIN SELECT 1; SELECT 2; END")
    try:
        cur = tx.cursor()
        cur.execute("CALL autopool_two()")
        assert pool_of().checkedout() == 1  # further results still on the connection
        assert cur.fetchone() == (1,)
        cur.close()
        assert pool_of().checkedout() == 0
        assert one(tx, "SELECT 3") == (3,)  # the next user is not out of sync
    finally:
        one(tx, "DROP PROCEDURE IF EXISTS autopool_two")


def test_shallow_copy_never_parks_the_original(tx: Any) -> None:
    cid(tx)
    dup = copy.copy(tx)
    assert one(dup, "SELECT 1") == (1,)
    dup.close()
    assert cid(tx)


def test_async_orm_gives_the_connection_back_between_awaits(tx: Any) -> None:
    """The async ORM (sync_to_async on the request's thread) parks like sync code does."""
    import sys

    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        pytest.skip("asgiref's sync_to_async needs real threads (ASGI servers do not run under gevent)")
    import asyncio

    from asgiref.sync import async_to_sync, sync_to_async

    row = Row.objects.using(ALIAS).create(value=14)
    between: list[int] = []

    async def view() -> None:
        first = await Row.objects.using(ALIAS).aget(pk=row.pk)
        between.append(pool_of().checkedout())
        await asyncio.sleep(0)
        second = await Row.objects.using(ALIAS).filter(pk=row.pk).afirst()
        assert first.pk == second.pk == row.pk
        await sync_to_async(lambda: connections[ALIAS].close())()

    async_to_sync(view)()  # sync parts run on this thread, as under Django's ASGI handler
    assert between == [0]
    Row.objects.using(ALIAS).filter(pk=row.pk).delete()


def test_constraint_checks_disabled_holds_one_session(tx: Any) -> None:
    """``SET foreign_key_checks=0`` (schema editor, loaddata outside atomic on MySQL) stays on one
    connection until checks are enabled again, and never reaches the pool."""
    cid(tx)
    with tx.constraint_checks_disabled():
        first = cid(tx)
        assert one(tx, "SELECT @@SESSION.foreign_key_checks") == (0,)
        assert cid(tx) == first and pool_of().checkedout() == 1
    assert pool_of().checkedout() == 0
    with autopool.pinned(ALIAS):  # both pooled connections: checks on
        assert one(tx, "SELECT @@SESSION.foreign_key_checks") == (1,)
    assert one(tx, "SELECT @@SESSION.foreign_key_checks") == (1,)


def test_statement_between_ensure_connection_and_cursor(tx: Any) -> None:
    """A statement run by a patched ensure_connection() (Django's own tests do) gives the
    connection back before _cursor() creates its cursor: the cursor gets one again."""
    from unittest import mock

    real = tx.ensure_connection

    def ensure_then_query() -> None:
        real()
        with mock.patch.object(tx, "ensure_connection", real):  # no recursion
            with tx.cursor() as cur:
                cur.execute("SELECT 1")

    cid(tx)
    with mock.patch.object(tx, "ensure_connection", side_effect=ensure_then_query):
        assert one(tx, "SELECT 2") == (2,)
    assert pool_of().checkedout() == 0


def test_cursor_reused_when_the_pool_hands_back_the_same_connection(server: Any) -> None:
    """With one pooled connection every statement gets the same physical connection back: a
    cursor kept across statements (Django's database cache does) still gets a live DB-API cursor."""
    with alias(server, "tx1", pool_size=1, max_overflow=0) as w:
        with w.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM testapp_row")
            cur.fetchone()
            with transaction.atomic(using="tx1"):
                cur.execute("INSERT INTO testapp_row (value, note) VALUES (15, 'same')")
            cur.execute("SELECT note FROM testapp_row WHERE value = 15")
            assert cur.fetchone() == ("same",)
            cur.execute("DELETE FROM testapp_row WHERE value = 15")
        assert pool_of("tx1").checkedout() == 0


_MODE_HOOKS_PROBE = """
import sys
import autopool, django, wrapt
from django.conf import settings
db = {"ENGINE": "django.db.backends.mysql", "NAME": "autopool_test", "USER": %(user)r, "PASSWORD": %(password)r,
      "HOST": %(host)r, "PORT": %(port)r}
settings.configure(DATABASES={"default": dict(db, POOL={"pool_size": 2}),
                              "tx": dict(db, POOL={"pool_size": 2, "pool_mode": "transaction"})})
autopool.install()
django.setup()
from django.db import connections
from django.db.backends.mysql.base import DatabaseWrapper
from autopool import hooks, txmode

def applied():
    def wrappers(value):
        while isinstance(value, wrapt.FunctionWrapper):
            yield value._self_wrapper
            value = value.__wrapped__
    return sorted(name for name, hook in txmode.MODE_PATCHES if hook in wrappers(DatabaseWrapper.__dict__.get(name)))

def one(alias, sql):
    with connections[alias].cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()

one("default", "SELECT 1")
connections["default"].close()
print("request mode:", applied())
tx = connections["tx"]
if sys.argv[1] == "constraints":  # the first use of the alias connects inside the wrapped call
    with tx.constraint_checks_disabled():
        print("inside:", one("tx", "SELECT @@SESSION.foreign_key_checks"), tx.connection is not None)
    print("after:", one("tx", "SELECT @@SESSION.foreign_key_checks"), tx.connection is None)
else:
    print("first statement:", one("tx", "SELECT 1"), tx.connection is None)
print("transaction mode:", applied())
autopool.uninstall()
print("uninstalled:", applied(), [n for n, _ in txmode.MODE_PATCHES if n in DatabaseWrapper.__dict__
                                  and isinstance(DatabaseWrapper.__dict__[n], wrapt.FunctionWrapper)])
"""


@pytest.mark.parametrize("first_use", ["statement", "constraints"])
def test_mode_hooks_wait_for_transaction_mode(server: Any, tmp_path: Any, first_use: str) -> None:
    """A process without a transaction-mode wrapper calls through none of the per-request
    transaction-mode hooks; the first wrapper to enter the mode has them from its first statement,
    even when it connects inside ``constraint_checks_disabled()``; ``uninstall()`` removes them."""
    import os
    import subprocess
    import sys

    path = tmp_path / "probe.py"
    path.write_text(_MODE_HOOKS_PROBE % dict(user=server.user, password=server.password, host=server.host,
                                             port=str(server.port)))
    out = subprocess.run([sys.executable, str(path), first_use], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert out.returncode == 0, out.stderr
    names = sorted(name for name, _ in txmode.MODE_PATCHES)
    expected = ["request mode: []"]
    if first_use == "constraints":
        expected += ["inside: (0,) True", "after: (1,) True"]
    else:
        expected += ["first statement: (1,) True"]
    expected += [f"transaction mode: {names}", "uninstalled: [] []"]
    assert out.stdout.splitlines() == expected, (out.stdout, out.stderr)
