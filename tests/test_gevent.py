"""gevent behaviour, each scenario in a freshly monkey-patched process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests import djsettings
from tests.scenario_main import DUMP_ENV

pytest.importorskip("gevent")
# Each scenario runs in a fresh monkey-patched process: scripts/test.sh runs them in its plain runs.
pytestmark = pytest.mark.gevent_subprocess


@pytest.fixture(scope="module")
def scenario(mariadb):
    mariadb.create_database("autopool_gevent")

    def run(name, timeout=120, **params):
        env = dict(os.environ, **mariadb.env())
        env[DUMP_ENV] = str(max(timeout - 10, timeout * 0.8))  # a hang shows its stacks (below), not only a timeout
        try:
            proc = subprocess.run([sys.executable, "-m", "tests.gevent_scenarios", name, json.dumps(params)],
                                  capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
            pytest.fail(f"scenario {name} {params} still running after {timeout} s; its stderr:\n{stderr[-8000:]}")
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    yield run
    mariadb.execute("DROP DATABASE IF EXISTS autopool_gevent")


def test_hard_cap_under_a_thousand_greenlets(scenario):
    r = scenario("cap", greenlets=1000)
    assert r["errors"] == []
    assert r["done"] == 1000
    assert r["samples"] > 5
    # Sessions on the scenario's own database (server-side, per database: no other client counts).
    assert r["max_db_conns"] <= 10  # pool_size 5 + max_overflow 5
    assert r["max_db_conns"] >= 5  # ... and the pool was really in use meanwhile
    assert r["waiting_seen"] > 100  # hundreds waited ...
    assert r["ticks_while_waiting"] >= 2  # ... while the hub kept running other greenlets
    assert r["checked_out_after"] == 0


@pytest.mark.skipif(djsettings.DRIVER != "mysqlclient",
                    reason="mysqlclient only (its cooperative wait); PyMySQL: test_pymysql_runs_queries_concurrently")
def test_cooperative_mysqlclient_runs_queries_concurrently(scenario):
    fast = scenario("sleep", greenlets=50, seconds=0.2)
    assert fast["class"] == ["CooperativeConnection"]
    assert fast["results"] == [0]
    assert fast["elapsed"] < 1.0
    # Without the cooperative wait the hub blocks: 10 x 0.2 s run one by one.
    slow = scenario("sleep", greenlets=10, seconds=0.2, cooperative=False)
    assert slow["class"] == ["Connection"]
    assert slow["elapsed"] >= 1.9


@pytest.mark.skipif(djsettings.DRIVER != "pymysql",
                    reason="PyMySQL only; mysqlclient: test_cooperative_mysqlclient_runs_queries_concurrently")
def test_pymysql_runs_queries_concurrently(scenario):
    r = scenario("sleep", greenlets=50, seconds=0.2)
    assert r["elapsed"] < 1.0


def test_a_connection_used_by_two_greenlets_fails_both_and_hangs_none(scenario):
    r = scenario("shared_connection")
    assert r["after"] == 3, r  # the next user of the pool gets its own result, not the second's 2
    assert r["finished"] == 2 and r["elapsed"] < 5
    assert r["second"] == ["error", "ConcurrentObjectUseError"]
    assert r["first"] == ["error", "OperationalError", 2013]  # its connection was closed under it
    assert not r["open"]  # never pooled with two queries in flight
    if djsettings.DRIVER == "pymysql":
        assert r["selects"] == 1  # the second query was refused before it was sent


@pytest.mark.skipif(djsettings.DRIVER != "pymysql", reason="PyMySQL's guard; mysqlclient under threads: "
                    "one connection per thread is the caller's duty (the C library is not thread-safe)")
def test_a_pymysql_connection_used_by_two_threads_fails_both(mariadb):
    """The same misuse with threads: the second thread's command is refused before it is sent
    and the connection is closed, so the first one's pending read fails instead of completing."""
    import threading

    import pymysql

    from autopool import drivers

    driver = drivers.for_module(pymysql)
    params = dict(host=mariadb.host, port=mariadb.port, user=mariadb.user, password=mariadb.password)
    if not mariadb.external and mariadb.socket:
        params = dict(host="localhost", unix_socket=mariadb.socket, user="root", password="")
    conn = pymysql.connect(**driver.connect_params(params))
    driver.prepare(conn)
    out = {}

    def first():
        try:
            conn.cursor().execute("SELECT SLEEP(5)")
            out["first"] = "ok"
        except pymysql.OperationalError as exc:
            out["first"] = exc.args[0]

    selects = mariadb.status("Com_select")
    thread = threading.Thread(target=first)
    thread.start()
    try:
        # The first thread is inside its query once it owns the connection and the server runs it.
        deadline = time.monotonic() + 10
        while conn._autopool_in_command is None or not any(
                "SLEEP(5)" in str(value) for row in mariadb.execute("SHOW PROCESSLIST") for value in row):
            assert time.monotonic() < deadline, "the first query never started"
            time.sleep(0.01)
        # Under monkey patching these threads are greenlets: gevent's own error, as for greenlets.
        expected: type[BaseException] = drivers.ConcurrentUseError
        monkey = sys.modules.get("gevent.monkey")
        if monkey is not None and monkey.is_module_patched("threading"):
            from gevent.exceptions import ConcurrentObjectUseError as expected
        with pytest.raises(expected):
            conn.cursor().execute("SELECT 2")
    finally:
        thread.join(10)
    assert not thread.is_alive()
    assert out["first"] == 2013  # lost connection: its reply is never read by anyone
    assert not conn.open
    assert not driver.is_open(conn)
    assert mariadb.status("Com_select") - selects == 1


def test_a_connection_returned_with_an_unread_reply_is_not_pooled(server):
    """Whatever left a reply unread (a command sent past the driver here), the pool sees the
    bytes on the socket at return and closes the connection: the next user reads its own result."""
    import select

    from django.db import connection

    from autopool import registry
    from tests.conftest import connection_id

    first_id = connection_id()
    raw = connection.connection
    if djsettings.DRIVER == "pymysql":
        raw._execute_command(3, b"SELECT 2")  # COM_QUERY, reply left unread
        fd = raw._sock.fileno()
    else:
        raw.send_query(b"SELECT 2")
        fd = raw.fileno()
    assert select.select([fd], [], [], 10)[0] == [fd], "the reply never arrived"
    connection.close()
    assert not next(registry.entries("default")).driver.is_open(raw)  # closed, not pooled
    with connection.cursor() as cur:
        cur.execute("SELECT 3")
        assert cur.fetchone()[0] == 3
        cur.execute("SELECT CONNECTION_ID()")
        assert cur.fetchone()[0] != first_id  # a new connection: the old one was closed, not pooled
    connection.close()


def test_results_and_errors_are_unchanged_by_the_cooperative_wait(scenario):
    """The same statements through autopool (mysqlclient: its cooperative wait) and through stock
    Django (no POOL: autopool leaves the alias alone) give the same results and errors."""
    coop = scenario("semantics", cooperative=True if djsettings.DRIVER == "mysqlclient" else "auto")
    stock = scenario("semantics", stock=True)
    assert coop == stock
    assert coop["select"] == ["ok", [["1", "a", "None", "2.5"]]]
    assert coop["multi"] == ["ok", [[["1"]], [["2", "3"]], [["x"]]]]
    assert coop["syntax"][0] == "error" and coop["syntax"][1] == "ProgrammingError"
    assert coop["kill_query"] in (["ok", [["1"]]], ["error", "OperationalError", [1317]])
    assert coop["kill_connection"][0] == "error" and coop["kill_connection"][1] == "OperationalError"
    assert coop["after_kill"] == coop["select"]


def test_exhausted_pool_times_out_with_a_useful_error(scenario):
    r = scenario("timeout", waiters=4)
    assert r["is_operational_error"]
    kinds = [x[0] for x in r["results"]]
    assert kinds == ["PoolTimeout"] * 4
    for _, waited, message in r["results"]:
        assert 0.25 <= waited < 2.0
        for part in ("'default'", "pool_size=2", "max_overflow=1", "checked out=3", "timeout=0.3", "waiting="):
            assert part in message
    assert r["checked_out_after"] == 0 and r["waiting_after"] == 0


def test_max_waiting_fails_fast(scenario):
    r = scenario("timeout", waiters=4, max_waiting=2)
    kinds = sorted(x[0] for x in r["results"])
    assert kinds == ["PoolTimeout", "PoolTimeout", "TooManyWaiters", "TooManyWaiters"]
    fast = [x[1] for x in r["results"] if x[0] == "TooManyWaiters"]
    assert max(fast) < 0.1
    assert "max_waiting=2" in [x[2] for x in r["results"] if x[0] == "TooManyWaiters"][0]


def test_greenlets_that_forget_to_close_do_not_shrink_the_pool(scenario):
    r = scenario("leak")
    assert r["visible_leaked_rows"] == 0  # nothing uncommitted survived
    assert r["checked_out_after"] == 0
    assert r["sloppy_errors"] == []
    # README: reclaimed within 1.5 s (the housekeeping task runs every second; measured 0.90-0.99 s).
    assert r["reclaimed_in"] < 1.5, r["reclaimed_in"]
    assert r["leaks"] == 4
    assert r["leak_logs"] and "'default'" in r["leak_logs"][0]


def test_an_always_full_pool_never_reclaims_live_checkouts(scenario):
    """Reclaim runs on every wait when the pool is exhausted: it must only ever
    take connections whose owner really ended."""
    r = scenario("cap", greenlets=600)
    assert r["errors"] == [] and r["done"] == 600
    assert r["leaks"] == 0


@pytest.mark.skipif(djsettings.DRIVER != "mysqlclient",
                    reason="mysqlclient only: its connects run in gevent's thread pool (PyMySQL's in the hub)")
def test_first_connects_in_pool_threads_touch_no_gevent_primitive(scenario):
    # Before the driver's lazily imported module was loaded up front, concurrent first connects
    # imported it in pool threads, under importlib's (patched, gevent) module lock.
    # Without it, the 20 first connects hung (every run) until the scenario's 60 s deadline.
    r = scenario("first_connects", greenlets=20)
    assert r["done"] == 20, "".join(r["stacks"][0]) if r["stacks"] else r
    assert r["hubs_in_pool_threads"] == 0, "".join(r["stacks"][0])


NO_GREENLET_SCRIPT = r"""
import json, sys, threading
sys.modules["greenlet"] = None  # as on a machine where greenlet is not installed
import pymysql
pymysql.install_as_MySQLdb()
import django
from django.conf import settings
from tests.mariadb import Server
import autopool

srv = Server.from_env_or_start()
autopool.install()
settings.configure(DATABASES={"default": {
    "ENGINE": "django.db.backends.mysql", "HOST": srv.host, "PORT": str(srv.port), "USER": srv.user,
    "PASSWORD": srv.password, "NAME": "", "POOL": {"pool_size": 2, "max_overflow": 0}}})
django.setup()
from django.db import connection

results = []

def request(n):
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s", [n])
        results.append(cursor.fetchone()[0])
    connection.close()

request(1)
request(2)  # the same thread again, on the pooled connection
threads = [threading.Thread(target=request, args=(n,)) for n in (3, 4, 5)]
for t in threads:
    t.start()
for t in threads:
    t.join(30)
print(json.dumps({"results": sorted(results), "greenlet": "greenlet" in sys.modules and sys.modules["greenlet"] is not None,
                  "checkouts": autopool.stats("default")[0]["checkouts"]}))
"""


@pytest.mark.skipif(djsettings.DRIVER != "pymysql", reason="PyMySQL's in-use guard; mysqlclient has none")
def test_pymysql_without_greenlet_serves_every_thread(mariadb):
    # greenlet is optional (SQLAlchemy 2.1 does not require it): the guard must then tell threads
    # apart by an identity that is stable per thread (get_ident() returns a new int object each call).
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, **mariadb.env())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", NO_GREENLET_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=120, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"results": [1, 2, 3, 4, 5], "greenlet": False, "checkouts": 5}, out
