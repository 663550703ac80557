#!/usr/bin/env python
"""``POOL["pool_mode"] = "transaction"`` under HTTP load (issue 20).

From the repository root::

    python -m bench.txmode                    # both drivers, 3 repetitions of 10 s (about 15 minutes)
    python -m bench.txmode --quick            # one repetition of 5 s
    python -m bench.txmode --drivers mysqlclient --duration 8

Same machinery as ``bench/run.py`` (imported from it): a throw-away MariaDB,
``example_project`` under ``gunicorn -k gevent -w 1``, ``wrk -c 100``, the
server's counters read before and after, the peak of ``Threads_connected``
sampled every 50 ms. Workloads:

* ``qwq``: ``/tx/query-wait-query?ms=50``: a query, 50 ms elsewhere
  (``time.sleep``, gevent's under this worker), a query;
* ``item``: ``/item/<random id>``: one query, where transaction mode cannot help.

Configurations per driver: autopool request mode and transaction mode (pool
10, max_overflow 0), stock persistent (``CONN_MAX_AGE=None``) and stock
``CONN_MAX_AGE=0``. Targets (issue 20): qwq transaction >= 4x request mode
(mysqlclient), >= 3.5x (PyMySQL), peak sessions <= 10, <= 2.1 commands per
request, 0 errors; item transaction >= 0.9x request mode. Report:
``bench/results/txmode.md`` (+ ``.json``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import run

# run.py's configurations and workloads: per driver, request mode, transaction mode and the stock
# ones on qwq; the two autopool modes on item (where transaction mode cannot help).
CONFIGS = run.CONFIGS
WORKLOADS = {key: run.WORKLOADS[key] for key in ("qwq", "item")}
PLAN = {"qwq": ("autopool", "autopool-tx", "persistent", "stock"), "item": ("autopool", "autopool-tx")}


def configs_for(workload: str, driver: str) -> list[str]:
    suffix = "" if driver == "mysqlclient" else "-" + driver
    return [name + suffix for name in PLAN[workload]]


def median(values: list[float]) -> float:
    values = sorted(v for v in values if v == v)
    if not values:
        return float("nan")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def summarise(results: list[Any], drivers: list[str]) -> list[str]:
    by: dict[tuple, list[Any]] = {}
    for r in results:
        by.setdefault((r.config, r.workload), []).append(r)

    def m(cfg: str, wk: str, attr: str) -> float:
        return median([getattr(r, attr) for r in by.get((cfg, wk), []) if r.ok])

    lines = ["| driver | workload | configuration | req/s | p50 ms | p99 ms | errors | peak sessions | "
             "commands/req | worker CPU ms/req |", "|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for driver in drivers:
        for wk in WORKLOADS:
            for cfg in configs_for(wk, driver):
                runs = by.get((cfg, wk), [])
                if not runs:
                    continue
                errors = sum(r.errors for r in runs)
                peak = max(r.peak_connections for r in runs)
                lines.append(f"| {driver} | {wk} | {CONFIGS[cfg].label} | {m(cfg, wk, 'rps'):.0f} | "
                             f"{m(cfg, wk, 'p50_ms'):.1f} | {m(cfg, wk, 'p99_ms'):.1f} | {errors} | {peak} | "
                             f"{m(cfg, wk, 'commands_per_request'):.2f} | "
                             f"{m(cfg, wk, 'worker_cpu_ms_per_request'):.3f} |")
        suffix = "" if driver == "mysqlclient" else "-" + driver
        req, tx = "autopool" + suffix, "autopool-tx" + suffix
        if (tx, "qwq") in by and (req, "qwq") in by:
            gain = m(tx, "qwq", "rps") / m(req, "qwq", "rps")
            need = {key: target for key, _, target in run.QWQ_TARGETS}[tx]
            runs = by[(tx, "qwq")]
            peak = max(r.peak_connections for r in runs)
            cpr = m(tx, "qwq", "commands_per_request")
            errors = sum(r.errors for r in runs)
            ok = gain >= need and peak <= run.POOL_SIZE and cpr <= 2.1 and errors == 0
            verdicts.append(f"- {driver} qwq: transaction / request = {gain:.2f}x (target >= {need}x), peak "
                            f"sessions {peak} (<= {run.POOL_SIZE}), {cpr:.2f} commands/request (<= 2.1), "
                            f"{errors} errors: {'MET' if ok else 'NOT MET'}")
        if (tx, "item") in by and (req, "item") in by:
            gain = m(tx, "item", "rps") / m(req, "item", "rps")
            verdicts.append(f"- {driver} item (one query): transaction / request = {gain:.2f}x (target >= 0.9x): "
                            f"{'MET' if gain >= 0.9 else 'NOT MET'}")
    return lines + [""] + verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repetition of 5 s per run")
    parser.add_argument("--duration", type=int, help="seconds of load per run (default 10, --quick 5)")
    parser.add_argument("--repeats", type=int, help="repetitions (default 3, --quick 1)")
    parser.add_argument("--drivers", default="mysqlclient,pymysql", help="comma-separated: mysqlclient,pymysql")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: qwq,item")
    parser.add_argument("--output", default=str(run.RESULTS / "txmode.md"), help="Markdown report path")
    args = parser.parse_args(argv)
    duration = args.duration or (5 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    for d in drivers:
        if d not in ("mysqlclient", "pymysql"):
            parser.error(f"unknown driver {d!r}")
    if shutil.which("wrk") is None:
        print("bench: wrk not found: run `bash scripts/bootstrap.sh` or `apt-get install wrk`", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, run._raise_interrupt)
    progress = sys.stderr.isatty()
    tmp = Path(tempfile.mkdtemp(prefix="autopool-bench-tx-"))
    run.CLEANUP.push("temporary files", lambda: shutil.rmtree(tmp, ignore_errors=True))
    results: list[Any] = []
    started = time.monotonic()
    try:
        server = run.Server.from_env_or_start()
        run.CLEANUP.push("MariaDB", server.stop)
        run.log(f"bench: {server.execute('SELECT VERSION()')[0][0]} on port {server.port}; preparing "
                f"{run.DB_NAME}")
        run.prepare_database(server)
        monitor = run.Monitor(server)
        run.CLEANUP.push("monitor connection", monitor.close)
        plan = [(wk, configs_for(wk, driver)) for driver in drivers for wk in workloads]
        for rep, wk, ck in run.schedule(plan, repeats, lambda ck: CONFIGS[ck].mode == "stock"):
            r = run.one_run(server, monitor, CONFIGS[ck], WORKLOADS[wk], rep, duration, tmp, progress, None)
            results.append(r)
            run.log(f"    {ck:<22} {wk:<5} {run.fmt(r.rps):>7} req/s  p50 {run.fmt(r.p50_ms, 1):>7} ms  "
                    f"errors {r.errors:>5}  peak conns {r.peak_connections:>4}  commands/req "
                    f"{run.fmt(r.commands_per_request, 2):>5}  cpu ms/req "
                    f"{run.fmt(r.worker_cpu_ms_per_request, 3)}  {r.note}")
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        run.CLEANUP.run()
    write_report(Path(args.output), results, drivers, duration, repeats, started)
    return 0


def write_report(out: Path, results: list[Any], drivers: list[str], duration: int, repeats: int,
                 started: float) -> None:
    summary = summarise(results, drivers)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = [
        "# pool_mode='transaction' under load (bench/txmode.py)", "",
        f"- Load: `wrk -c {run.CONNECTIONS} -t {run.THREADS} -d {duration}s` against `gunicorn -k gevent -w 1`, "
        f"a fresh gunicorn per run, {repeats} repetition(s) interleaved (stock CONN_MAX_AGE=0 runs after the others: "
        "bench/run.py's `schedule()`), medians shown; pool_size "
        f"{run.POOL_SIZE}, max_overflow 0. Peak sessions: the highest `Threads_connected` sampled every 50 ms "
        "(the sampler's own session excluded); commands/req: `Questions` + `Com_admin_commands` per request.",
        f"- Machine load before: {run._loadavg()}; total {time.monotonic() - started:.0f} s.", "",
    ]
    out.write_text("\n".join(header + summary) + "\n")
    out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in results], indent=1, default=str))
    print("\n".join(summary))
    run.log(f"bench: report in {out}")


if __name__ == "__main__":
    sys.exit(main())
