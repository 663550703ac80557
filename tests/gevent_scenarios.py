"""Scenarios that need gevent's monkey patching from the very start.

Run as ``python -m tests.gevent_scenarios NAME [json-args]`` with the test
server in ``AUTOPOOL_TEST_MYSQL_*``; prints one JSON object. ``test_gevent``
runs each in a fresh process, so the main test process stays unpatched.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

DB = "autopool_gevent"


def setup(pool, **extra):
    import django
    from django.conf import settings

    from tests import djsettings
    from tests.mariadb import Server

    djsettings.use_driver()
    server = Server.from_env_or_start()
    settings.configure(
        USE_TZ=True, SECRET_KEY="x", INSTALLED_APPS=["tests.testapp"],
        DATABASES={"default": djsettings.database(server, DB, pool, **extra)},
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    import autopool

    autopool.install()
    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", run_syncdb=True, verbosity=0)
    connection.close()
    return server


def side_count(server):
    """Connections the server has open to this scenario's database."""
    rows = server.execute(f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{DB}'")
    return int(rows[0][0])


def sampler(server, stop, out):
    conn = server.admin_connect()
    try:
        cur = conn.cursor()
        while not stop.is_set():
            cur.execute(f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{DB}'")
            db_conns = int(cur.fetchone()[0])
            cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
            out.append((db_conns, int(cur.fetchone()[1])))
            stop.wait(0.01)
    finally:
        conn.close()


def select_value(sql):
    """One request's worth of work: check out, read one value, return the connection."""
    from django.db import connection

    try:
        with connection.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    finally:
        connection.close()


def scenario_cap(args):
    """1,000 greenlets doing ORM work on a small pool; a ticker proves the hub runs."""
    n = args.get("greenlets", 1000)
    server = setup({"pool_size": 5, "max_overflow": 5, "timeout": 60})
    from django.db import connection

    from tests.testapp.models import Row

    connection.ensure_connection()
    connection.close()
    baseline = server.status("Threads_connected")
    samples, stop = [], Event()
    side = gevent.spawn(sampler, server, stop, samples)
    ticks = [0]
    waiting_ticks = []

    def ticker():
        while not stop.is_set():
            ticks[0] += 1
            gevent.sleep(0.005)

    tick = gevent.spawn(ticker)
    done = []

    def work(i):
        try:
            Row.objects.filter(value=i).exists()
            with connection.cursor() as cur:
                cur.execute("SELECT SLEEP(0.005)")
            done.append(i)
        finally:
            connection.close()

    start = time.monotonic()
    workers = [gevent.spawn(work, i) for i in range(n)]
    # While hundreds wait for a connection, the ticker keeps running.
    from autopool import registry

    pool = next(iter(registry.entries())).pool
    deadline = time.monotonic() + 5
    while pool.waiting() < n // 2 and time.monotonic() < deadline:
        gevent.sleep(0.001)
    waiting_now = pool.waiting()
    t0 = ticks[0]
    gevent.sleep(0.1)
    waiting_ticks.append(ticks[0] - t0)
    gevent.joinall(workers, timeout=60)
    elapsed = time.monotonic() - start
    stop.set()
    gevent.joinall([side, tick], timeout=5)
    return {
        "done": len(done), "elapsed": elapsed, "max_db_conns": max(s[0] for s in samples),
        "max_threads_connected": max(s[1] for s in samples), "baseline_threads": baseline,
        "samples": len(samples), "waiting_seen": waiting_now, "ticks_while_waiting": waiting_ticks[0],
        "checked_out_after": pool.checkedout(), "opened_after": pool.opened(), "leaks": pool.counters.leaks,
        "errors": [repr(g.exception) for g in workers if g.exception is not None][:3],
    }


def scenario_sleep(args):
    """N greenlets each run SELECT SLEEP(s) on a pool of N."""
    n, secs = args.get("greenlets", 50), args.get("seconds", 0.2)
    setup({"pool_size": n, "max_overflow": 0, "timeout": 30, "cooperative": args.get("cooperative", "auto")})
    from django.db import connection

    # warm the pool so the measurement is queries, not connects
    def warm(_):
        connection.ensure_connection()
        gevent.sleep(0.05)
        connection.close()

    gevent.joinall([gevent.spawn(warm, i) for i in range(n)])

    def work(_):
        try:
            with connection.cursor() as cur:
                cur.execute("SELECT SLEEP(%s)", [secs])
                return cur.fetchone()[0], type(connection.connection).__name__
        finally:
            connection.close()

    start = time.monotonic()
    jobs = [gevent.spawn(work, i) for i in range(n)]
    gevent.joinall(jobs, timeout=60)
    return {"elapsed": time.monotonic() - start, "results": sorted({j.value[0] for j in jobs}),
            "class": sorted({j.value[1] for j in jobs})}


def scenario_shared_connection(args):
    """One pooled connection used by two greenlets at once (a bug in the caller): both
    get an error, neither waits forever, the connection is not pooled, and the pool's
    next user gets its own result."""
    server = setup({"pool_size": 1, "max_overflow": 0, "timeout": 10})
    from django.db import connection

    connection.ensure_connection()
    raw = connection.connection
    started = Event()

    def query(sql):
        started.set()
        try:
            cur = raw.cursor()
            cur.execute(sql)
            return ["ok", [list(map(str, row)) for row in cur.fetchall()]]
        except Exception as exc:  # noqa: BLE001 - the error is the result
            code = exc.args[0] if type(exc).__name__ == "OperationalError" else None
            return ["error", type(exc).__name__] + ([code] if code is not None else [])

    selects = server.status("Com_select")
    first = gevent.spawn(query, "SELECT SLEEP(0.5)")
    # set() wakes this greenlet only once the first one yields, i.e. waits for its reply.
    started.wait()
    second = gevent.spawn(query, "SELECT 2")
    start = time.monotonic()
    finished = gevent.joinall([first, second], timeout=10)
    elapsed = time.monotonic() - start
    # SELECTs the server ran meanwhile (SHOW STATUS is not one).
    selects = server.status("Com_select") - selects
    is_open = raw.open
    connection.close()
    job = gevent.spawn(select_value, "SELECT 3")
    job.join(10)
    return {"first": first.value, "second": second.value, "finished": len(finished), "elapsed": elapsed,
            "after": job.value, "open": is_open, "selects": selects}


def scenario_semantics(args):
    """Results and errors of the same statements, as JSON, for comparison with stock Django
    (``stock``: the alias has no POOL, so autopool leaves it alone)."""
    pool = None if args.get("stock") else {"pool_size": 3, "max_overflow": 0,
                                           "cooperative": args.get("cooperative", "auto")}
    server = setup(pool, OPTIONS={"charset": "utf8mb4", "client_flag": 1 << 16})  # CLIENT.MULTI_STATEMENTS
    from django.db import connection

    out = {}

    def run(name, fn):
        try:
            out[name] = ["ok", fn()]
        except Exception as exc:  # noqa: BLE001
            out[name] = ["error", type(exc).__name__, list(getattr(exc, "args", ()))[:1]]
        finally:
            connection.close()

    def select():
        with connection.cursor() as cur:
            cur.execute("SELECT 1, 'a', NULL, 2.5")
            return [list(map(str, cur.fetchone()))]

    def syntax():
        with connection.cursor() as cur:
            cur.execute("SELEC 1")

    def multi():
        with connection.cursor() as cur:
            cur.execute("SELECT 1; SELECT 2, 3; SELECT 'x'")
            sets = [[list(map(str, r)) for r in cur.fetchall()]]
            while cur.nextset():
                sets.append([list(map(str, r)) for r in cur.fetchall()])
            return sets

    def later(sql):
        # A real OS thread: with stock mysqlclient the hub is blocked, so a
        # greenlet could not kill anything until the query ended.
        done = monkey.get_original("threading", "Event")()

        def run():
            monkey.get_original("time", "sleep")(0.3)
            server.execute(sql)
            done.set()

        monkey.get_original("_thread", "start_new_thread")(run, ())
        return done

    def kill_query():
        with connection.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            killed = later(f"KILL QUERY {cur.fetchone()[0]}")
            try:
                cur.execute("SELECT SLEEP(5)")
                return [list(map(str, cur.fetchone()))]
            finally:
                killed.wait(10)

    def kill_connection():
        with connection.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            killed = later(f"KILL {cur.fetchone()[0]}")
            try:
                cur.execute("SELECT SLEEP(5)")
            finally:
                killed.wait(10)

    for name, fn in [("select", select), ("syntax", syntax), ("multi", multi), ("kill_query", kill_query),
                     ("kill_connection", kill_connection), ("after_kill", select)]:
        run(name, fn)
    return out


def scenario_timeout(args):
    """An exhausted pool: bounded waits, PoolTimeout and TooManyWaiters."""
    setup({"pool_size": 2, "max_overflow": 1, "timeout": 0.3, "max_waiting": args.get("max_waiting")})
    from django.db import connection

    import autopool

    hold, results = Event(), []

    def holder():
        try:
            connection.ensure_connection()
            hold.wait(10)
        finally:
            connection.close()

    def waiter():
        start = time.monotonic()
        try:
            connection.ensure_connection()
            results.append(["ok", time.monotonic() - start])
        except autopool.TooManyWaiters as exc:
            results.append(["TooManyWaiters", time.monotonic() - start, str(exc)])
        except autopool.PoolTimeout as exc:
            results.append(["PoolTimeout", time.monotonic() - start, str(exc)])
        finally:
            connection.close()

    holders = [gevent.spawn(holder) for _ in range(3)]
    from autopool import registry
    from tests.scenario_main import wait_until

    wait_until(lambda: any(e.pool.checkedout() == 3 for e in registry.entries()), 10, "3 holders checked out")
    waiters = [gevent.spawn(waiter) for _ in range(args.get("waiters", 4))]
    gevent.joinall(waiters, timeout=10)
    hold.set()
    gevent.joinall(holders, timeout=10)
    pool = next(iter(registry.entries())).pool
    from django.db import OperationalError

    return {"results": results, "is_operational_error": issubclass(autopool.PoolTimeout, OperationalError),
            "checked_out_after": pool.checkedout(), "waiting_after": pool.waiting()}


def scenario_leak(args):
    """Greenlets that end without closing their connection."""
    setup({"pool_size": 2, "max_overflow": 0, "timeout": 5})
    records = []

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logging.getLogger("autopool").addHandler(Grab())
    from django.db import connection

    from tests.testapp.models import Row

    def sloppy(i):
        connection.set_autocommit(False)
        Row.objects.create(value=1000 + i)  # never committed, never closed

    sloppies = [gevent.spawn(sloppy, i) for i in range(4)]
    gevent.joinall(sloppies)
    ended = time.monotonic()  # the last of them has ended
    from autopool import registry
    from tests.scenario_main import wait_until

    pool = next(iter(registry.entries())).pool
    # The housekeeping task reclaims what the dead greenlets held, without
    # waiting for the garbage collector; poll for it with a deadline.
    wait_until(lambda: pool.checkedout() == 0, 5, fail=False)
    reclaimed_in = time.monotonic() - ended
    # The pool still serves: leaked connections came back or were closed.
    def clean():
        try:
            return Row.objects.filter(value__gte=1000).count()
        finally:
            connection.close()

    job = gevent.spawn(clean)
    job.join(10)
    return {"leak_logs": [m for m in records if "without closing" in m or "without close" in m],
            "sloppy_errors": [repr(g.exception) for g in sloppies if g.exception is not None],
            "visible_leaked_rows": job.value, "reclaimed_in": reclaimed_in,
            "checked_out_after": pool.checkedout(), "leaks": pool.counters.leaks}


def scenario_first_connects(args):
    """Many greenlets connect at once as the process's very first connections (mysqlclient hands
    connects to gevent's thread pool). Counts gevent hubs created in pool threads: a pool thread
    that needs a hub touched a gevent primitive (importlib's module lock, once patched), which can
    hang it for good."""
    import gevent.hub

    created = []
    hub_init = gevent.hub.Hub.__init__
    os_ident = monkey.get_original("_thread", "get_ident")
    main_thread = os_ident()

    def recording_init(self, *a, **kw):
        if os_ident() != main_thread:
            created.append(__import__("traceback").format_stack(limit=25))
        hub_init(self, *a, **kw)

    gevent.hub.Hub.__init__ = recording_init
    n = args.get("greenlets", 20)
    # Not setup(): its migrate would connect first, alone.
    import django
    from django.conf import settings

    from tests import djsettings
    from tests.mariadb import Server

    djsettings.use_driver()
    server = Server.from_env_or_start()
    settings.configure(SECRET_KEY="x", INSTALLED_APPS=[], DATABASES={
        "default": djsettings.database(server, DB, {"pool_size": n, "max_overflow": 0, "timeout": 30})})
    import autopool

    autopool.install()
    django.setup()
    jobs = [gevent.spawn(select_value, "SELECT 1") for _ in range(n)]
    gevent.joinall(jobs, timeout=60)
    return {"done": sum(1 for j in jobs if j.value == 1), "hubs_in_pool_threads": len(created),
            "stacks": created}


if __name__ == "__main__":
    from tests.scenario_main import main

    main(globals())
