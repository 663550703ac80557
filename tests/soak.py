"""Soak: a gevent mix of reads, writes, transactions, pool timeouts and killed connections.

Standalone, from the repository root::

    python -m tests.soak --seconds 120            # human summary; exit status 1 on any failed check
    python -m tests.soak --seconds 20 --json      # one JSON object (what tests/test_reliability.py reads)

It uses the server in ``AUTOPOOL_TEST_MYSQL_*`` or starts a throw-away one, and works in its own
database and as its own user (``autopool_soak``), so the server's PROCESSLIST can be matched against
the pools exactly. Driver: ``AUTOPOOL_TEST_DRIVER`` (mysqlclient or pymysql). ``AUTOPOOL_SOAK_SECONDS``
sets the default duration: ``tests/test_reliability.py::test_soak`` runs 20 s unless it is set (CI
can use 120).

The load, for ``--seconds``: ``--greenlets`` workers run requests picked at random --

* ``read``      the sum of all balances (must never change) and an echo (must be its own);
* ``write``     insert a row and delete it again (autocommit);
* ``transfer``  move money between two accounts in ``atomic()`` (row locks, ordered);
* ``abort``     ``atomic()`` with a marker row, left by an exception;
* ``abandon``   autocommit off, a marker row, the request ends without commit;
* ``session``   on a ``reset_session`` alias: no user variable or temporary table from a previous
  user may be visible; then leave some behind;
* ``slow``      ``SELECT SLEEP(0.05)``: with the tiny pool (4 + 2 connections) requests queue;
* ``interrupt`` a request cut short by ``gevent.Timeout`` in the middle of a query;

while a killer ``KILL``s a random session of the soak user every 150 ms, and a squeezer holds every
connection of the tiny pool for 0.5 s once a second, so that waiting requests time out
(``PoolTimeout`` after the pool's 0.3 s).

Checks at the end: no invariant broken (balances, echoes, marker rows, session leaks); every
request succeeded or failed with a documented error (``OperationalError`` and its subclasses,
``autopool.PoolTimeout`` among them; the ``gevent.Timeout`` of ``interrupt`` requests); every worker
finished; each pool has nothing checked out or waiting and all its connections idle; the server
shows exactly the pools' open connections for this user; and the process's memory (RSS and live
Python objects) did not grow beyond a bound after warm-up.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

DB = "autopool_soak"
USER = "autopool_soak"
PASSWORD = "soak-Pw-3141"
ACCOUNTS = 10
TOTAL = 10_000
KINDS = {"read": 30, "write": 15, "transfer": 20, "abort": 5, "abandon": 5, "session": 10, "slow": 10,
         "interrupt": 5}
# Memory may grow this much after warm-up (allocator noise, caches filling up), no more.
RSS_BOUND = 16 * 1024 * 1024
OBJECTS_BOUND = 10_000


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class InvariantBroken(Exception):
    """A result that must never happen: counted as a failure, never as a clean error."""


def setup_server(server: Any) -> None:
    server.create_database(DB)
    for host in ("127.0.0.1", "localhost", "%"):
        server.execute(f"CREATE USER IF NOT EXISTS '{USER}'@'{host}' IDENTIFIED BY '{PASSWORD}'")
        server.execute(f"GRANT ALL PRIVILEGES ON {DB}.* TO '{USER}'@'{host}'")
    server.execute(
        f"CREATE TABLE {DB}.account (id INT PRIMARY KEY, balance INT NOT NULL) ENGINE=InnoDB;"
        f"CREATE TABLE {DB}.marker (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(20)) ENGINE=InnoDB;"
        f"CREATE TABLE {DB}.scratch (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB;"
        f"INSERT INTO {DB}.account VALUES " + ",".join(f"({i}, {TOTAL // ACCOUNTS})" for i in range(ACCOUNTS)))


def configure(server: Any) -> None:
    import django
    from django.conf import settings

    from tests import djsettings

    djsettings.use_driver()

    def db(pool: dict[str, Any]) -> dict[str, Any]:
        return djsettings.database(server, DB, pool, USER=USER, PASSWORD=PASSWORD,
                                   OPTIONS={"charset": "utf8mb4", "connect_timeout": 5, "read_timeout": 10})

    settings.configure(
        USE_TZ=True, SECRET_KEY="soak", INSTALLED_APPS=[], DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        DATABASES={
            "default": db({"pool_size": 4, "max_overflow": 2, "timeout": 0.3}),
            "session": db({"pool_size": 2, "max_overflow": 0, "timeout": 0.3, "reset_session": True}),
        },
    )
    import autopool

    autopool.install()
    django.setup()


class Soak:
    def __init__(self, server: Any, seconds: float, greenlets: int, seed: int) -> None:
        self.server, self.seconds, self.greenlets = server, seconds, greenlets
        self.rng = random.Random(seed)
        self.outcomes: Counter = Counter()  # (kind, outcome)
        self.broken: list[str] = []
        self.unexpected: list[str] = []
        self.kills = 0
        self.stop = Event()

    # -- requests -------------------------------------------------------------------------------
    def request(self, kind: str, n: int) -> None:
        from django.db import connections

        alias = "session" if kind == "session" else "default"
        conn = connections[alias]
        try:
            getattr(self, "do_" + kind)(conn, n)
            self.outcomes[(kind, "ok")] += 1
        except InvariantBroken as exc:
            self.broken.append(f"{kind}: {exc}")
        except gevent.Timeout:
            self.outcomes[(kind, "gevent.Timeout")] += 1
        except Exception as exc:  # noqa: BLE001 - classified
            self.classify(kind, exc)
        finally:
            try:
                conn.close()
            except Exception as exc:  # noqa: BLE001
                self.classify(kind + ".close", exc)

    def classify(self, kind: str, exc: BaseException) -> None:
        from django.db import OperationalError

        import autopool

        if isinstance(exc, autopool.PoolTimeout):
            self.outcomes[(kind, "PoolTimeout")] += 1
        elif isinstance(exc, OperationalError):
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            self.outcomes[(kind, f"OperationalError({code})")] += 1
        else:
            self.outcomes[(kind, type(exc).__name__)] += 1
            if len(self.unexpected) < 20:
                self.unexpected.append(f"{kind}: {type(exc).__module__}.{type(exc).__name__}: {exc}")

    def do_read(self, conn: Any, n: int) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT SUM(balance), COUNT(*) FROM account")
            total, count = cur.fetchone()
            if (int(total), int(count)) != (TOTAL, ACCOUNTS):
                raise InvariantBroken(f"balances sum to {total} over {count} accounts")
            token = f"echo-{n}"
            cur.execute("SELECT %s", [token])
            got = cur.fetchone()
            if got is None or got[0] != token:
                raise InvariantBroken(f"asked for {token!r}, got {got!r}")

    def do_write(self, conn: Any, n: int) -> None:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO scratch (v) VALUES (%s)", [n])
            cur.execute("DELETE FROM scratch WHERE v = %s", [n])

    def do_transfer(self, conn: Any, n: int) -> None:
        from django.db import transaction

        a, b = sorted(self.rng.sample(range(ACCOUNTS), 2))
        amount = self.rng.randint(1, 50)
        with transaction.atomic(using=conn.alias):
            with conn.cursor() as cur:
                cur.execute("SELECT id, balance FROM account WHERE id IN (%s, %s) ORDER BY id FOR UPDATE", [a, b])
                rows = dict(cur.fetchall())
                if len(rows) != 2:
                    raise InvariantBroken(f"accounts {a}, {b} not both found: {rows}")
                cur.execute("UPDATE account SET balance = balance - %s WHERE id = %s", [amount, a])
                cur.execute("UPDATE account SET balance = balance + %s WHERE id = %s", [amount, b])

    def do_abort(self, conn: Any, n: int) -> None:
        from django.db import transaction

        class Abort(Exception):
            pass

        try:
            with transaction.atomic(using=conn.alias):
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO marker (tag) VALUES ('aborted')")
                    cur.execute("UPDATE account SET balance = balance + 1000 WHERE id = 0")
                raise Abort()
        except Abort:
            pass

    def do_abandon(self, conn: Any, n: int) -> None:
        conn.set_autocommit(False)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO marker (tag) VALUES ('abandoned')")
            cur.execute("UPDATE account SET balance = balance + 1000 WHERE id = 1")
        # the request ends here: close() must roll back, never commit

    def do_session(self, conn: Any, n: int) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT @soak_left_behind, @@SESSION.time_zone")
            var, tz = cur.fetchone()
            if var is not None or tz != "SYSTEM":
                raise InvariantBroken(f"session state of a previous user visible: {var!r}, {tz!r}")
            try:
                cur.execute("CREATE TEMPORARY TABLE soak_tmp (x INT)")  # left behind on purpose
            except Exception as exc:  # noqa: BLE001
                if "already exists" in str(exc):
                    raise InvariantBroken("a previous user's temporary table is visible") from None
                raise
            cur.execute("SET @soak_left_behind = %s", [n])
            cur.execute("SET SESSION time_zone = '+03:00'")

    def do_slow(self, conn: Any, n: int) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT SLEEP(0.05)")
            cur.fetchone()

    def do_interrupt(self, conn: Any, n: int) -> None:
        conn.ensure_connection()  # interrupt the query, not the wait for a connection
        with gevent.Timeout(0.02):
            with conn.cursor() as cur:
                cur.execute("SELECT %s, SLEEP(0.05)", [f"interrupted-{n}"])
                cur.fetchone()

    # -- load ---------------------------------------------------------------------------------
    def worker(self, wid: int) -> None:
        kinds, weights = list(KINDS), list(KINDS.values())
        rng = random.Random(self.rng.random())
        n = wid * 10_000_000
        while not self.stop.is_set():
            n += 1
            self.request(rng.choices(kinds, weights)[0], n)
            gevent.sleep(rng.random() * 0.004)  # pacing, not synchronisation

    def killer(self) -> None:
        conn = self.server.admin_connect()
        try:
            cur = conn.cursor()
            while not self.stop.wait(0.15):
                cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (USER,))
                ids = [r[0] for r in cur.fetchall()]
                if ids:
                    try:
                        cur.execute(f"KILL {self.rng.choice(ids)}")
                        self.kills += 1
                    except Exception:  # noqa: BLE001 - it may have ended meanwhile
                        pass
        finally:
            conn.close()

    def sweep(self, alias: str, n: int) -> None:
        from django.db import connections

        all_held = Event()
        held: list[int] = []

        def use() -> None:
            conn = connections[alias]
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
            except Exception:  # noqa: BLE001 - a killed session: discarded by close()
                pass
            finally:
                held.append(1)
                if len(held) == n:
                    all_held.set()
                all_held.wait(5)
                conn.close()

        gevent.joinall([gevent.spawn(use) for _ in range(n)], timeout=15)

    def squeezer(self) -> None:
        from django.db import connections

        def hold(release: Event) -> None:
            conn = connections["default"]
            try:
                conn.ensure_connection()
                release.wait(0.5)
            except Exception:  # noqa: BLE001 - a PoolTimeout or a kill: nothing to check here
                pass
            finally:
                conn.close()

        while not self.stop.wait(1.0):
            release = Event()
            holders = [gevent.spawn(hold, release) for _ in range(6)]
            self.stop.wait(0.5)
            release.set()
            gevent.joinall(holders, timeout=10)

    def run(self) -> dict[str, Any]:
        from autopool import registry

        gc.collect()
        start = time.monotonic()
        warmup = start + max(3.0, self.seconds * 0.25)
        workers = [gevent.spawn(self.worker, i) for i in range(self.greenlets)]
        killer = gevent.spawn(self.killer)
        squeezer = gevent.spawn(self.squeezer)
        baseline: dict[str, int] | None = None
        peak_rss = 0
        while time.monotonic() < start + self.seconds:
            self.stop.wait(0.25)
            peak_rss = max(peak_rss, rss())
            if baseline is None and time.monotonic() >= warmup:
                gc.collect()
                baseline = {"rss": rss(), "objects": len(gc.get_objects())}
        self.stop.set()
        helpers = [killer, squeezer]
        gevent.joinall(workers + helpers, timeout=15)
        unfinished = sum(1 for g in workers + helpers if not g.dead)
        gevent.killall([g for g in workers + helpers if not g.dead], timeout=5)
        elapsed = time.monotonic() - start
        gc.collect()
        end = {"rss": rss(), "objects": len(gc.get_objects())}
        baseline = baseline or end

        # The killer may have ended idle pooled sessions just before it stopped; the pools learn
        # that on the next checkout. Use every idle connection once, all at the same time.
        for alias, pool in {e.alias: e.pool for e in registry.entries()}.items():
            self.sweep(alias, pool.checkedin())
        pools = {e.alias: e.pool for e in registry.entries()}
        states = {alias: {"opened": p.opened(), "idle": p.checkedin(), "checked_out": p.checkedout(),
                          "waiting": p.waiting(), "counters": p.counters.as_dict()} for alias, p in pools.items()}
        # Live connections: an invalidated entry stays in its pool without one until its next
        # checkout reconnects it (SQLAlchemy's rule), so opened() may count one more than the server.
        opened = sum(1 for p in pools.values() for records in p.connection_records()
                     for rec in records if rec.dbapi_connection is not None)

        def server_sessions() -> int:
            return int(self.server.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                                           "WHERE USER = %s AND DB = %s", (USER, DB))[0][0])

        deadline = time.monotonic() + 10
        while server_sessions() != opened and time.monotonic() < deadline:
            gevent.sleep(0.05)  # killed sessions leave the PROCESSLIST asynchronously
        sessions = server_sessions()
        balance = int(self.server.execute(f"SELECT SUM(balance) FROM {DB}.account")[0][0])
        markers = int(self.server.execute(f"SELECT COUNT(*) FROM {DB}.marker")[0][0])

        outcomes: dict[str, dict[str, int]] = {}
        for (kind, outcome), count in sorted(self.outcomes.items()):
            outcomes.setdefault(kind, {})[outcome] = count
        total = sum(self.outcomes.values())
        ok = sum(c for (_, o), c in self.outcomes.items() if o == "ok")
        timeouts = sum(c for (_, o), c in self.outcomes.items() if o == "PoolTimeout")
        checks = {
            "invariants": not self.broken and balance == TOTAL and markers == 0,
            "clean_errors": not self.unexpected,
            "workers_finished": unfinished == 0,
            "pools_consistent": all(s["checked_out"] == 0 and s["waiting"] == 0 and s["opened"] == s["idle"]
                                    for s in states.values()),
            "server_matches_pools": sessions == opened,
            "memory_bounded": end["rss"] - baseline["rss"] <= RSS_BOUND
            and end["objects"] - baseline["objects"] <= OBJECTS_BOUND,
            "mix_exercised": ok > 0 and timeouts > 0 and self.kills > 0
            and any(o.startswith("OperationalError") for (_, o) in self.outcomes),
        }
        return {
            "driver": os.environ.get("AUTOPOOL_TEST_DRIVER", "mysqlclient"), "seconds": round(elapsed, 1),
            "greenlets": self.greenlets, "requests": total, "ok": ok, "pool_timeouts": timeouts,
            "kills": self.kills, "outcomes": outcomes, "broken": self.broken[:20], "unexpected": self.unexpected,
            "balance": balance, "markers": markers, "unfinished": unfinished, "pools": states,
            "server_sessions": sessions, "pool_connections": opened,
            "memory": {"baseline": baseline, "end": end, "peak_rss": peak_rss,
                       "rss_growth": end["rss"] - baseline["rss"],
                       "objects_growth": end["objects"] - baseline["objects"],
                       "rss_bound": RSS_BOUND, "objects_bound": OBJECTS_BOUND},
            "checks": checks, "passed": all(checks.values()),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("AUTOPOOL_SOAK_SECONDS", 20)))
    parser.add_argument("--greenlets", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    parser.add_argument("--log", action="store_true", help="show autopool's warnings (one per PoolTimeout, ...)")
    args = parser.parse_args(argv)
    if not args.log:
        logging.getLogger("autopool").setLevel(logging.ERROR)

    from tests import djsettings
    from tests.mariadb import Server

    djsettings.use_driver()  # before anything imports MySQLdb (the admin connections do)
    server = Server.from_env_or_start()
    try:
        setup_server(server)
        configure(server)
        result = Soak(server, args.seconds, args.greenlets, args.seed).run()
        from django.db import connections

        import autopool

        connections.close_all()
        autopool.dispose()
        server.execute(f"DROP DATABASE IF EXISTS {DB}")
        for host in ("127.0.0.1", "localhost", "%"):
            server.execute(f"DROP USER IF EXISTS '{USER}'@'{host}'")
    finally:
        if not server.external:
            server.stop()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"soak: {result['requests']} requests in {result['seconds']} s on {result['driver']}, "
              f"{result['ok']} ok, {result['pool_timeouts']} pool timeouts, {result['kills']} kills")
        for kind, outcomes in result["outcomes"].items():
            print(f"  {kind:16} " + ", ".join(f"{o}: {c}" for o, c in outcomes.items()))
        mem = result["memory"]
        print(f"  memory after warm-up: RSS {mem['rss_growth'] / 1e6:+.1f} MB, "
              f"objects {mem['objects_growth']:+d}")
        for name, passed in result["checks"].items():
            print(f"  {'ok  ' if passed else 'FAIL'} {name}")
        for line in result["broken"] + result["unexpected"]:
            print(f"  ! {line}")
    sys.stdout.flush()
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    code = main()
    os._exit(code)  # skip interpreter teardown with live gevent objects
