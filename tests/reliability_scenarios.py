"""Reliability scenarios that need gevent's monkey patching from the very start.

Run as ``python -m tests.reliability_scenarios NAME [json-args]`` with the target server in
``AUTOPOOL_TEST_MYSQL_*``; prints one JSON object on its last line. ``tests/test_reliability.py``
runs each in a fresh process. Every greenlet a scenario spawns is joined or killed before it
returns, and every wait has a deadline.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

from tests.scenario_main import wait_until  # noqa: E402

DB = "autopool_rel_gevent"


def setup(databases: dict[str, dict[str, Any]]) -> Any:
    """Configure Django with ``{alias: (pool, overrides)}`` on the server from the environment."""
    import django
    from django.conf import settings

    from tests import djsettings
    from tests.mariadb import ENV, Server

    if not os.environ.get(ENV + "HOST"):
        raise SystemExit("reliability_scenarios: the test must pass the server in the environment")
    djsettings.use_driver()
    server = Server.from_env_or_start()
    settings.configure(
        USE_TZ=True, SECRET_KEY="x", INSTALLED_APPS=["tests.testapp"],
        DATABASES={alias: djsettings.database(server, extra.pop("NAME", DB), pool, **extra)
                   for alias, (pool, extra) in databases.items()},
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
    )
    import autopool

    autopool.install()
    django.setup()
    return server


def pool_of(alias: str = "default") -> Any:
    from autopool import registry

    return next(registry.entries(alias)).pool


def pool_state(alias: str = "default") -> dict[str, int]:
    pool = pool_of(alias)
    return {"opened": pool.opened(), "idle": pool.checkedin(), "checked_out": pool.checkedout(),
            "waiting": pool.waiting(), "invalidated": pool.counters.connections_invalidated}


def db_sessions(server: Any, db: str = DB) -> int:
    return int(server.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s", (db,))[0][0])


def running(server: Any, text: str) -> Callable[[], bool]:
    def check() -> bool:
        rows = server.execute("SELECT 1 FROM information_schema.PROCESSLIST WHERE INFO LIKE %s "
                              "AND ID <> CONNECTION_ID()", (f"%{text}%",))
        return bool(rows)
    return check


class Ticker:
    """A greenlet that notes the longest gap between its runs: how long the hub was blocked."""

    def __init__(self) -> None:
        self.stop = Event()
        self.max_gap = 0.0
        self.greenlet = gevent.spawn(self.run)

    def run(self) -> None:
        last = time.monotonic()
        while not self.stop.is_set():
            gevent.sleep(0.005)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now

    def reset(self) -> None:
        self.max_gap = 0.0

    def close(self) -> float:
        self.stop.set()
        self.greenlet.join(5)
        return self.max_gap


def error_kind(exc: BaseException) -> list[Any]:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return [f"{type(exc).__module__}.{type(exc).__name__}", code]


# -- data safety under interruption ---------------------------------------------------------------

def scenario_interrupt(args: dict[str, Any]) -> dict[str, Any]:
    """A greenlet killed (gevent.kill, gevent.Timeout) while its query runs: the next user of the
    pool must get its own results, and nothing the victim wrote may survive."""
    server = setup({"default": ({"pool_size": 1, "max_overflow": 0, "timeout": 5}, {})})
    server.execute(f"DROP TABLE IF EXISTS {DB}.rel_int; CREATE TABLE {DB}.rel_int "
                   "(id INT AUTO_INCREMENT PRIMARY KEY, v INT NOT NULL) ENGINE=InnoDB")
    from django.db import connection, transaction

    out: dict[str, Any] = {"class": None}

    def next_user(tag: str) -> dict[str, Any]:
        """Twenty queries whose answers must be their own."""
        wrong, errors = [], []

        def work() -> None:
            for i in range(20):
                try:
                    with connection.cursor() as cur:
                        cur.execute("SELECT %s", [f"{tag}-{i}"])
                        got = cur.fetchone()
                    out["class"] = type(connection.connection).__name__
                    if got is None or got[0] != f"{tag}-{i}":
                        wrong.append([i, None if got is None else [str(x) for x in got]])
                except Exception as exc:  # noqa: BLE001
                    errors.append(error_kind(exc))
                finally:
                    connection.close()

        g = gevent.spawn(work)
        g.join(20)
        return {"wrong": wrong[:5], "n_wrong": len(wrong), "errors": errors[:5], "finished": g.dead}

    def victim(sql: str, in_atomic: bool) -> None:
        try:
            if in_atomic:
                with transaction.atomic():
                    with connection.cursor() as cur:
                        cur.execute("INSERT INTO rel_int (v) VALUES (1)")
                        cur.execute(sql)
            else:
                with connection.cursor() as cur:
                    cur.execute(sql)
        finally:
            connection.close()  # what the end of a request does

    def run_case(name: str, in_atomic: bool, how: str) -> None:
        marker = f"victim_{name}"
        sql = f"SELECT '{marker}', SLEEP(0.5)"
        connection.ensure_connection()  # warm: the pool's one connection exists
        connection.close()
        def timed() -> None:
            with gevent.Timeout(0.3):
                victim(sql, in_atomic)

        g = gevent.spawn(victim, sql, in_atomic) if how == "kill" else gevent.spawn(timed)
        started = wait_until(running(server, marker), 10, fail=False)
        if how == "kill":
            g.kill(block=True, timeout=10)
        else:
            g.join(10)
        case = {"started": started, "victim_dead": g.dead}
        # The victim's session (if it was closed) must end before its rows are checked.
        wait_until(lambda: not running(server, marker)(), 10, fail=False)
        case.update(next_user(name))
        case["rows"] = int(server.execute(f"SELECT COUNT(*) FROM {DB}.rel_int")[0][0])
        case["pool"] = pool_state()
        out[name] = case

    run_case("kill_select", False, "kill")
    run_case("timeout_select", False, "timeout")
    run_case("kill_atomic", True, "kill")
    run_case("timeout_atomic", True, "timeout")
    return out


def scenario_killed_waiter(args: dict[str, Any]) -> dict[str, Any]:
    """A greenlet killed (or timed out by gevent.Timeout) while it waits for a connection must not
    take a connection or a slot with it: ``kill`` and ``timeout`` while it is queued; ``handed``
    killed after a returned connection was handed to it, before it ran again."""
    setup({"default": ({"pool_size": 1, "max_overflow": 0, "timeout": 1}, {})})
    from django.db import connection

    out: dict[str, Any] = {}
    for how in ("kill", "timeout", "handed"):
        hold, held = Event(), Event()
        case: dict[str, Any] = {}

        def holder() -> None:
            try:
                with connection.cursor() as cur:
                    cur.execute("SELECT CONNECTION_ID()")
                    case["holder_id"] = int(cur.fetchone()[0])
                held.set()
                hold.wait(10)
            finally:
                if how == "handed":
                    # The kill is scheduled first, then close() hands the connection to the queued
                    # waiter: the kill reaches it before its wake-up does (no yield in between).
                    w.kill(block=False)
                connection.close()
                if how == "handed":
                    case["at_kill"] = {"waiting": pool_of().waiting(), "checked_out": pool_of().checkedout()}

        def waiter() -> None:
            try:
                if how == "timeout":
                    with gevent.Timeout(0.2):
                        connection.ensure_connection()
                else:
                    connection.ensure_connection()
                case["waiter_got_a_connection"] = True
            finally:
                connection.close()

        h = gevent.spawn(holder)
        case["held"] = held.wait(5)
        w = gevent.spawn(waiter)
        case["queued"] = wait_until(lambda: pool_of().waiting() == 1, 5, fail=False)
        if how == "kill":
            w.kill(block=True, timeout=5)
        elif how == "timeout":
            w.join(5)
        case["waiting_after_kill"] = pool_of().waiting()
        hold.set()
        h.join(5)
        w.join(5)
        case["greenlets"] = {name: [g.dead, ended_by(g)] for name, g in (("holder", h), ("waiter", w))}

        def again() -> Any:
            try:
                return ["ok", select_connection_id()]
            except Exception as exc:  # noqa: BLE001 - the result
                return [type(exc).__name__]

        start = time.monotonic()
        g = gevent.spawn(again)
        g.join(10)
        case.update(next_checkout=g.value, next_checkout_s=time.monotonic() - start, pool=pool_state())
        out[how] = case
    return out


def ended_by(g: Any) -> Any:
    """The name of what ended greenlet ``g``: its exception, GreenletExit if killed, None if it returned."""
    if g.exception is not None:
        return type(g.exception).__name__
    return type(g.value).__name__ if isinstance(g.value, BaseException) else None  # kill(): GreenletExit


def select_connection_id() -> int:
    from django.db import connection

    try:
        with connection.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            return int(cur.fetchone()[0])
    finally:
        connection.close()


# -- server restart under load --------------------------------------------------------------------

def scenario_restart(args: dict[str, Any]) -> dict[str, Any]:
    """Greenlets keep issuing requests while the server is stopped and started again."""
    from tests.mariadb import Server

    pool = {"pool_size": 4, "max_overflow": 2, "timeout": args.get("timeout", 2)}
    if args.get("pre_ping"):
        pool["django_pre_ping"] = True
    options = {"charset": "utf8mb4", "connect_timeout": 2, "read_timeout": 5}
    server = setup({"default": (pool, {"NAME": args["db"], "OPTIONS": options})})
    own = Server(port=server.port, directory=args["dir"], pid=args["pid"])
    from django.db import connection

    log: list[list[Any]] = []  # [start, end, error kind or None]
    stop = Event()

    def worker() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            kind = None
            try:
                with connection.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.fetchone()
            except Exception as exc:  # noqa: BLE001 - classified by the test
                kind = error_kind(exc)
            finally:
                try:
                    connection.close()
                except Exception as exc:  # noqa: BLE001
                    kind = kind or error_kind(exc)
            log.append([t0, time.monotonic(), kind])
            gevent.sleep(0.002)  # pacing, not synchronisation

    def ok_since(t: float) -> int:
        return sum(1 for s, _, k in log if s >= t and k is None)

    def failed_since(t: float) -> int:
        return sum(1 for s, _, k in log if s >= t and k is not None)

    workers = [gevent.spawn(worker) for _ in range(args.get("greenlets", 20))]
    warm = wait_until(lambda: ok_since(0) >= 100, 15, fail=False)
    t_down = time.monotonic()
    own._kill()  # SIGTERM, waits (cooperatively) until mariadbd has exited
    t_stopped = time.monotonic()
    # The outage lasts a second at least, and until requests have been seen failing.
    outage = args.get("outage", 1.0)
    outage_seen = wait_until(lambda: failed_since(t_stopped) >= 20 and time.monotonic() - t_stopped >= outage, 15,
                             fail=False)
    own.start()  # returns once the server answers
    t_up = time.monotonic()
    recovered = wait_until(lambda: time.monotonic() > t_up + 1.5 and ok_since(t_up + 1.0) >= 50, 20, fail=False)
    stop.set()
    gevent.joinall(workers, timeout=15)
    unfinished = sum(1 for w in workers if not w.dead)
    gevent.killall([w for w in workers if not w.dead], timeout=5)
    first_ok_after_up = min((e for s, e, k in log if k is None and e >= t_up), default=None)
    # Sessions the server holds for this database settle once killed ones are gone.
    state = pool_state()
    settled = wait_until(lambda: db_sessions(server, args["db"]) == pool_of().opened(), 10, fail=False)
    return {
        "warm": warm, "outage_seen": outage_seen, "recovered": recovered, "unfinished": unfinished,
        "t_down": t_down, "t_stopped": t_stopped, "t_up": t_up,
        "requests": len(log), "ok": sum(1 for *_, k in log if k is None),
        "errors": sorted({json.dumps(k) for *_, k in log if k is not None}),
        "max_failed_s": max((e - s for s, e, k in log if k is not None), default=0.0),
        "max_ok_s": max((e - s for s, e, k in log if k is None), default=0.0),
        "first_ok_after_up_s": None if first_ok_after_up is None else first_ok_after_up - t_up,
        "failed_after_up_plus_1s": failed_since(t_up + 1.0),
        "failed_after_up": failed_since(t_up),
        "pool": state, "pool_after": pool_state(), "db_sessions": db_sessions(server, args["db"]),
        "settled": settled, "pid": own.pid,
    }


# -- network faults through the proxy -------------------------------------------------------------

def _upstream_port(connection: Any) -> int:
    with connection.cursor() as cur:
        cur.execute("SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
        return int(cur.fetchone()[0].rsplit(":", 1)[1])


def scenario_stall(args: dict[str, Any]) -> dict[str, Any]:
    """One connection's server stops answering mid-query: that request fails within read_timeout
    while the other greenlets keep being served by the same pool."""
    from tests.mariadb import Server
    from tests.tcpproxy import ProxyProcess

    real = Server.from_env_or_start()
    read_timeout = args.get("read_timeout", 2)
    proxy = ProxyProcess(real.host, real.port).start()
    try:
        os.environ["AUTOPOOL_TEST_MYSQL_HOST"], os.environ["AUTOPOOL_TEST_MYSQL_PORT"] = proxy.host, str(proxy.port)
        options = {"charset": "utf8mb4", "connect_timeout": 2, "read_timeout": read_timeout}
        setup({"default": ({"pool_size": 4, "max_overflow": 0, "timeout": 5}, {"OPTIONS": options})})
        from django.db import connection

        from autopool import registry

        # Warm the pool: four connections through the proxy.
        go = Event()

        def warm() -> None:
            connection.ensure_connection()
            go.wait(5)
            connection.close()

        warmers = [gevent.spawn(warm) for _ in range(4)]
        wait_until(lambda: list(registry.entries()) and pool_of().checkedout() == 4, 10, fail=False)
        go.set()
        gevent.joinall(warmers, timeout=10)

        result: dict[str, Any] = {}
        stalled = Event()

        def victim() -> None:
            try:
                port = _upstream_port(connection)
                if "after_bytes" in args:  # the request goes through; its reply stops mid-stream
                    proxy.stall(port, after_bytes=args["after_bytes"], requests=False)
                else:
                    proxy.stall(port)
                result["cooperative"] = type(connection.connection).__name__
                stalled.set()
                start = time.monotonic()
                try:
                    with connection.cursor() as cur:
                        cur.execute(args.get("sql", "SELECT 1"))
                        cur.fetchall()
                    result["victim"] = ["ok", time.monotonic() - start]
                except Exception as exc:  # noqa: BLE001
                    result["victim"] = [error_kind(exc), time.monotonic() - start, str(exc)[:200]]
            finally:
                connection.close()

        served: list[float] = []
        stop = Event()

        def other() -> None:
            while not stop.is_set():
                try:
                    with connection.cursor() as cur:
                        cur.execute("SELECT 1")
                        cur.fetchone()
                    served.append(time.monotonic())
                except Exception as exc:  # noqa: BLE001
                    result.setdefault("other_errors", []).append(error_kind(exc))
                finally:
                    connection.close()
                gevent.sleep(0.005)

        ticker = Ticker()
        v = gevent.spawn(victim)
        stalled.wait(10)
        t_stall = time.monotonic()
        others = [gevent.spawn(other) for _ in range(3)]
        v.join(read_timeout + 10)
        t_done = time.monotonic()
        stop.set()
        gevent.joinall(others, timeout=10)
        stuck = [o for o in others if not o.dead]
        if stuck:
            import traceback

            result["stuck"] = ["".join(traceback.format_stack(o.gr_frame)) for o in stuck]
        result["max_gap"] = ticker.close()
        result["victim_finished"] = v.dead
        result["died_of"] = [ended_by(g) for g in (v, *others) if g.dead and ended_by(g) is not None]
        result["served_during_stall"] = sum(1 for t in served if t_stall <= t <= t_done)
        result["pool"] = pool_state()
        return result
    finally:
        proxy.stop()


def scenario_blackhole(args: dict[str, Any]) -> dict[str, Any]:
    """A server that accepts but never answers: connecting is bounded by connect_timeout (and, for
    PyMySQL's handshake, read_timeout) while greenlets on another alias keep working."""
    from tests.mariadb import Server
    from tests.tcpproxy import ProxyProcess

    real = Server.from_env_or_start()
    proxy = ProxyProcess(real.host, real.port).start()
    try:
        proxy.set_mode("blackhole")
        timeouts = {"connect_timeout": args.get("connect_timeout", 2), "read_timeout": args.get("read_timeout", 2)}
        setup({
            "default": ({"pool_size": 2, "max_overflow": 0, "timeout": 5}, {}),
            "frozen": ({"pool_size": 2, "max_overflow": 0, "timeout": 5},
                       {"HOST": proxy.host, "PORT": str(proxy.port), "OPTIONS": dict(charset="utf8mb4", **timeouts)}),
        })
        from django.db import connections

        connections["default"].ensure_connection()
        connections["default"].close()
        result: dict[str, Any] = {}
        served: list[float] = []
        stop = Event()

        def frozen() -> None:
            start = time.monotonic()
            try:
                connections["frozen"].ensure_connection()
                result["frozen"] = ["ok", time.monotonic() - start]
            except Exception as exc:  # noqa: BLE001
                result["frozen"] = [error_kind(exc), time.monotonic() - start]
            finally:
                connections["frozen"].close()

        def other() -> None:
            while not stop.is_set():
                try:
                    with connections["default"].cursor() as cur:
                        cur.execute("SELECT 1")
                    served.append(time.monotonic())
                finally:
                    connections["default"].close()
                gevent.sleep(0.005)

        ticker = Ticker()
        o = gevent.spawn(other)
        gevent.sleep(0)
        t0 = time.monotonic()
        f = gevent.spawn(frozen)
        f.join(30)
        t1 = time.monotonic()
        stop.set()
        o.join(10)
        result["max_gap"] = ticker.close()
        result["frozen_finished"] = f.dead
        result["ended_by"] = {"frozen": ended_by(f), "other": ended_by(o) if o.dead else "still running"}
        result["served_meanwhile"] = sum(1 for t in served if t0 <= t <= t1)
        result["frozen_pool"] = pool_state("frozen")
        result["default_pool"] = pool_state("default")
        return result
    finally:
        proxy.stop()


if __name__ == "__main__":
    from tests.scenario_main import main

    main(globals())
