#!/usr/bin/env python
"""Micro benchmark: what one checkout + return costs next to one query.

    python -m bench.micro [--quick] [--json FILE]

For each driver (mysqlclient, PyMySQL; each in its own process, since Django
loads one ``MySQLdb``) and in the same process, on a warm pool:

* autopool through Django: ``connection.ensure_connection(); connection.close()``
  with ``POOL = {"pool_size": 10, "max_overflow": 0}`` and ``CONN_MAX_AGE = 0``
  (what every request pays for its connection), and the same pool alone;
* a bare SQLAlchemy ``QueuePool`` ``connect().close()`` with
  ``reset_on_return=None`` (the pool alone) and with its default
  ``reset_on_return="rollback"`` (one ROLLBACK round trip per return);
* one ``SELECT 1`` round trip on a raw driver connection;
* for scale: stock Django with ``CONN_MAX_AGE = 0``, a new connection each time;
* under gevent (a third process, monkey patched): the CPU cost of a cooperative
  ``SELECT 1`` against a blocking one, and of a checkout that has to wait for a
  returned connection (100 greenlets, pool of 10) against one that does not.

Uses ``AUTOPOOL_TEST_MYSQL_*`` when set, else starts a throw-away MariaDB.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

DRIVERS = ("mysqlclient", "pymysql")
GREENLETS = 100


def timeit(fn: Callable[[], Any], n: int, rounds: int) -> float:
    """Best round's mean time of one call, in microseconds (the minimum: other load on
    the machine only ever adds time)."""
    for _ in range(max(n // 10, 10)):
        fn()
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        per.append((time.perf_counter() - t0) / n * 1e6)
    return min(per)


def setup_django(**pool_sizes: int | None) -> Callable[[], Any]:
    """``autopool.install()``, then Django with one alias per keyword (its ``pool_size``, or no
    POOL for ``None``) on the server of ``AUTOPOOL_TEST_MYSQL_*``; returns a raw driver connect()."""
    import autopool

    autopool.install()
    import django
    from django.conf import settings

    host = os.environ["AUTOPOOL_TEST_MYSQL_HOST"]
    port = int(os.environ.get("AUTOPOOL_TEST_MYSQL_PORT") or 3306)
    user = os.environ.get("AUTOPOOL_TEST_MYSQL_USER") or "root"
    password = os.environ.get("AUTOPOOL_TEST_MYSQL_PASSWORD", "")
    base = {"ENGINE": "django.db.backends.mysql", "NAME": "", "HOST": host, "PORT": str(port),
            "USER": user, "PASSWORD": password, "CONN_MAX_AGE": 0}
    settings.configure(
        DATABASES={alias: dict(base) if size is None else
                   dict(base, POOL={"pool_size": size, "max_overflow": 0, "timeout": 30})
                   for alias, size in pool_sizes.items()},
        INSTALLED_APPS=[], USE_TZ=True, DEBUG=False)
    django.setup()
    import MySQLdb

    def connect() -> Any:
        return MySQLdb.connect(host=host, port=port, user=user, password=password)

    return connect


def measure(driver: str, quick: bool) -> dict[str, float]:
    if driver == "pymysql":
        import pymysql

        pymysql.install_as_MySQLdb()
    import autopool

    connect = setup_django(default=10, stock=None)
    from django.db import connections
    from sqlalchemy.pool import QueuePool

    n, rounds = (2000, 7) if quick else (5000, 15)
    out: dict[str, float] = {}

    pooled = connections["default"]

    def django_checkout_return() -> None:
        pooled.ensure_connection()
        pooled.close()

    out["django_checkout_return_us"] = timeit(django_checkout_return, n, rounds)
    # The same pool without Django's connect()/close() around it.
    from autopool import registry

    pool = next(registry.entries("default")).pool
    out["autopool_pool_checkout_return_us"] = timeit(lambda: pool.connect().close(), n, rounds)

    bare = QueuePool(connect, pool_size=10, max_overflow=0, reset_on_return=None)
    out["sqlalchemy_checkout_return_us"] = timeit(lambda: bare.connect().close(), n, rounds)
    bare.dispose()
    rollback = QueuePool(connect, pool_size=10, max_overflow=0)  # SQLAlchemy's default: rollback on return
    out["sqlalchemy_rollback_checkout_return_us"] = timeit(lambda: rollback.connect().close(), n, rounds)
    rollback.dispose()

    raw = connect()
    cur = raw.cursor()

    def select1() -> None:
        cur.execute("SELECT 1")
        cur.fetchall()

    out["select1_us"] = timeit(select1, n, rounds)
    raw.close()

    stock = connections["stock"]

    def stock_connect_close() -> None:
        stock.ensure_connection()
        stock.close()

    out["stock_connect_close_us"] = timeit(stock_connect_close, max(n // 20, 50), 5)

    stats = autopool.stats("default")[0]
    out["pool_connections_opened"] = stats["connections_opened"]
    out["pool_checkouts"] = stats["checkouts"]
    out["pool_rollbacks_on_return"] = stats["rollbacks_on_return"]
    out["django_vs_select1"] = out["django_checkout_return_us"] / out["select1_us"]
    out["sqlalchemy_vs_select1"] = out["sqlalchemy_checkout_return_us"] / out["select1_us"]
    out["django_vs_sqlalchemy"] = out["django_checkout_return_us"] / out["sqlalchemy_checkout_return_us"]
    return out


def measure_gevent(quick: bool) -> dict[str, float]:
    """Under gevent (monkey patched, as in gunicorn's gevent worker), mysqlclient:
    what a cooperative query and a contended checkout cost in CPU time."""
    from gevent import monkey

    monkey.patch_all()

    import autopool

    connect = setup_django(default=GREENLETS, small=10)

    from autopool import gevent as autopool_gevent

    n, rounds = (2000, 5) if quick else (5000, 10)
    out: dict[str, float] = {}

    blocking = connect()
    cooperative = autopool_gevent.make_cooperative(connect())
    for name, conn in (("gevent_select1_blocking_us", blocking), ("gevent_select1_cooperative_us", cooperative)):
        cur = conn.cursor()

        def select1(cur: Any = cur) -> None:
            cur.execute("SELECT 1")
            cur.fetchall()

        out[name] = timeit(select1, n, rounds)
        # CPU time rather than wall time: the wait for the server is not the client's cost.
        best = float("inf")
        for _ in range(rounds):
            t0 = time.process_time()
            for _ in range(n):
                select1()
            best = min(best, (time.process_time() - t0) / n * 1e6)
        out[name.replace("_us", "_cpu_us")] = best
        conn.close()

    per_greenlet = max(n // GREENLETS, 20)

    out["gevent_checkout_no_wait_cpu_us"] = contended_checkout_cpu_us("default", per_greenlet, rounds)
    out["gevent_checkout_wait_cpu_us"] = contended_checkout_cpu_us("small", per_greenlet, rounds)
    for stat in autopool.stats():
        stat["alias"] = "large" if stat["alias"] == "default" else stat["alias"]
        out[f"gevent_{stat['alias']}_waits"] = stat["waits"]
        out[f"gevent_{stat['alias']}_checkouts"] = stat["checkouts"]
    return out


def contended_checkout_cpu_us(alias: str, per_greenlet: int, rounds: int) -> float:
    """GREENLETS greenlets: checkout, yield once while holding it, return. CPU µs per checkout
    (gevent's monkey patching done, Django set up)."""
    import gevent
    from django.db import connections

    def worker() -> None:
        conn = connections[alias]
        for _ in range(per_greenlet):
            conn.ensure_connection()
            gevent.sleep(0)
            conn.close()

    def run() -> None:
        greenlets = [gevent.spawn(worker) for _ in range(GREENLETS)]
        gevent.joinall(greenlets)
        for g in greenlets:
            if g.exception is not None:
                raise g.exception

    run()  # warm: open the pool
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        run()
        best = min(best, (time.process_time() - t0) / (per_greenlet * GREENLETS) * 1e6)
    return best


def markdown(drivers: dict[str, dict[str, float]]) -> str:
    rows = [
        ("autopool via Django: ensure_connection() + close()", "django_checkout_return_us"),
        ("autopool's pool alone: connect().close()", "autopool_pool_checkout_return_us"),
        ("bare SQLAlchemy QueuePool connect().close(), reset_on_return=None", "sqlalchemy_checkout_return_us"),
        ("bare SQLAlchemy QueuePool connect().close(), default reset (ROLLBACK)",
         "sqlalchemy_rollback_checkout_return_us"),
        ("one SELECT 1 round trip (raw driver)", "select1_us"),
        ("stock Django CONN_MAX_AGE=0: connect + close (new connection)", "stock_connect_close_us"),
    ]
    gev = drivers.pop("gevent", None)
    names = list(drivers)
    lines = ["| operation | " + " | ".join(f"{d} µs | {d} × SELECT 1" for d in names) + " |",
             "|---|" + "---:|---:|" * len(names)]
    for label, key in rows:
        cells = []
        for d in names:
            m = drivers[d]
            cells.append(f"{m[key]:.1f} | {m[key] / m['select1_us']:.2f}x")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for d in names:
        m = drivers[d]
        lines.append(f"- {d}: autopool checkout+return = {m['django_vs_select1']:.2f}x a SELECT 1 "
                     f"(target <= 0.5x), {m['django_vs_sqlalchemy']:.2f}x a bare SQLAlchemy checkout; "
                     f"{int(m['pool_connections_opened'])} connection(s) opened for "
                     f"{int(m['pool_checkouts'])} checkouts, {int(m['pool_rollbacks_on_return'])} rollbacks on return.")
    if gev:
        drivers["gevent"] = gev
        lines += [
            "",
            f"Under gevent (monkey patched), mysqlclient, {GREENLETS} greenlets:",
            "",
            "| operation | wall µs | CPU µs |",
            "|---|---:|---:|",
            f"| SELECT 1, blocking mysqlclient | {gev['gevent_select1_blocking_us']:.1f} | "
            f"{gev['gevent_select1_blocking_cpu_us']:.1f} |",
            f"| SELECT 1, autopool's cooperative wait | {gev['gevent_select1_cooperative_us']:.1f} | "
            f"{gev['gevent_select1_cooperative_cpu_us']:.1f} |",
            f"| checkout + sleep(0) + return, pool of {GREENLETS} (no waiting; "
            f"{int(gev['gevent_large_waits'])} waits / {int(gev['gevent_large_checkouts'])} checkouts) | | "
            f"{gev['gevent_checkout_no_wait_cpu_us']:.1f} |",
            f"| checkout + sleep(0) + return, pool of 10 (waits for a returned connection; "
            f"{int(gev['gevent_small_waits'])} waits / {int(gev['gevent_small_checkouts'])} checkouts) | | "
            f"{gev['gevent_checkout_wait_cpu_us']:.1f} |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--driver", choices=DRIVERS + ("gevent",), help=argparse.SUPPRESS)  # inner run
    args = parser.parse_args(argv)
    if args.driver == "gevent":
        print(json.dumps(measure_gevent(args.quick)))
        return 0
    if args.driver:
        print(json.dumps(measure(args.driver, args.quick)))
        return 0

    server = None
    env = dict(os.environ)
    if not env.get("AUTOPOOL_TEST_MYSQL_HOST"):
        from tests.mariadb import Server

        server = Server.from_env_or_start()
        env.update(server.env())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    try:
        drivers: dict[str, dict[str, float]] = {}
        for driver in DRIVERS + ("gevent",):
            cmd = [sys.executable, "-m", "bench.micro", "--driver", driver] + (["--quick"] if args.quick else [])
            proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            if proc.returncode:
                print(f"micro: {driver} run failed ({proc.returncode})", file=sys.stderr)
                continue
            drivers[driver] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    finally:
        if server is not None:
            server.stop()
    md = markdown(drivers)
    print(md)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"drivers": drivers, "markdown": md}, indent=1))
    return 0 if len(drivers) == len(DRIVERS) + 1 else 1


if __name__ == "__main__":
    sys.exit(main())
