#!/usr/bin/env python
"""ASGI benchmark: example_project under uvicorn (one worker), stock Django against autopool.

From the repository root::

    python -m bench.asgi               # 3 repetitions of 10 s per run (~10 minutes)
    python -m bench.asgi --quick       # one repetition of 5 s
    python -m bench.asgi --workers 2   # uvicorn --workers 2: a process per core, as deployed
    python -m bench.run --asgi         # the same, from the main benchmark script

A throw-away MariaDB (``tests/mariadb.py``) with the example database seeded
(``bench/run.py``'s set-up), then, for each configuration and workload, a fresh
``uvicorn example_project.asgi:application`` (one process; ``--workers N``:
N worker processes, each with its own pool, so the cap is N x pool_size) on a free loopback
port, loaded with ``wrk -c 50 -t 2`` for the duration. Workloads: a one-row
ORM SELECT through the async API (``/async/item/<id>``: ``aget``) and through a
sync view (``/item/<id>``), random ids; and ``qwq``, an async view that
awaits ``aget()``, ``asyncio.sleep(0.05)``, ``aget()``
(``/async/tx/query-wait-query``) under ``wrk -c 100``. Configurations: stock
``CONN_MAX_AGE=0`` (a connection per request), stock persistent
(``CONN_MAX_AGE=None``), autopool (``pool_size=10, max_overflow=0``) and, on
qwq, autopool with ``pool_mode="transaction"`` (and both autopool modes on
``qwq200``, the same view waiting 200 ms). Every repetition runs each
configuration once, in a rotated order, stock ones included (see ``main``);
the verdicts take the median of each repetition's own ratio, and show its
range.

Measured on the server by a side connection: peak sessions
(``Threads_connected`` sampled every 50 ms, minus the baseline), sessions still
connected 5 s after the load while uvicorn still runs (persistent connections
leak under ASGI: Django opens one per request thread), and commands per request
(``Questions`` + ``Com_admin_commands``, the side connection's own excluded).
Output: ``bench/results/asgi.md`` and ``asgi.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import run as base
from tests.mariadb import Server, free_port

ROOT = Path(__file__).resolve().parent.parent

CONNECTIONS = 50
THREADS = 2
POOL_SIZE = 10
LEAK_WAIT = 5.0
WORKERS = 1  # uvicorn worker processes (--workers); the session cap is WORKERS * POOL_SIZE

TX_CONNECTIONS = 100  # the qwq workload's clients, as bench/txmode.py's


@dataclass(frozen=True)
class Config:
    mode: str  # EXAMPLE_MODE
    label: str
    pool_options: dict[str, Any] | None = None


@dataclass(frozen=True)
class Workload:
    path: str  # a prefix completed by a random id, or (fixed) the whole path
    label: str
    connections: int = CONNECTIONS
    fixed: bool = False


CONFIGS = {
    "stock": Config("stock", "stock CONN_MAX_AGE=0"),
    "persistent": Config("persistent", "stock persistent (CONN_MAX_AGE=None)"),
    "autopool": Config("autopool", f"autopool pool_size={POOL_SIZE}, max_overflow=0"),
    "autopool-tx": Config("autopool", f"autopool pool_size={POOL_SIZE}, max_overflow=0, pool_mode='transaction'",
                          {"pool_mode": "transaction"}),
}
WORKLOADS = {
    "async": Workload("/async/item/", "async view, aget() (one SELECT)"),
    "sync": Workload("/item/", "sync view, get() (one SELECT)"),
    "qwq": Workload("/async/tx/query-wait-query?ms=50",
                    f"async view: aget(), await asyncio.sleep(0.05), aget() ({TX_CONNECTIONS} clients)",
                    TX_CONNECTIONS, fixed=True),
    # The same with a 200 ms wait: request mode's cap (pool_size / hold time) falls fourfold, while
    # transaction mode's limit, one uvicorn process's CPU, stays where it was.
    "qwq200": Workload("/async/tx/query-wait-query?ms=200",
                       f"async view: aget(), await asyncio.sleep(0.2), aget() ({TX_CONNECTIONS} clients)",
                       TX_CONNECTIONS, fixed=True),
}
# Which configurations run which workload: transaction mode where it can help.
PLAN = {"async": ("stock", "persistent", "autopool"), "sync": ("stock", "persistent", "autopool"),
        "qwq": ("stock", "persistent", "autopool", "autopool-tx"), "qwq200": ("autopool", "autopool-tx")}
LUA = r"""
local prefix = "__PREFIX__"
local max_id = __MAX_ID__
local fixed = __FIXED__
function init(args) math.randomseed(os.time() + (tonumber(tostring({}):sub(8)) or 0)) end
request = function()
  if fixed then return wrk.format("GET", prefix) end
  return wrk.format("GET", prefix .. math.random(1, max_id))
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "errors": %d, "status": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Result:
    config: str
    workload: str
    rep: int
    rps: float = 0.0
    requests: int = 0
    errors: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    peak_sessions: int = 0
    leftover_sessions: int = 0
    new_connections: int = 0
    commands_per_request: float = float("nan")
    uvicorn_cpu_ms_per_request: float = float("nan")
    server_cpu_ms_per_request: float = float("nan")
    note: str = ""


def start_uvicorn(server: Server, mode: str, log_path: Path,
                  pool_options: dict[str, Any] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    env = base.server_env(server)
    env.update(EXAMPLE_MODE=mode, EXAMPLE_DRIVER="mysqlclient", EXAMPLE_POOL_SIZE=str(POOL_SIZE))
    if pool_options:
        env["EXAMPLE_POOL_OPTIONS"] = json.dumps(pool_options)
    for _ in range(5):
        port = free_port()
        cmd = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
               "--log-level", "warning", "example_project.asgi:application"]
        if WORKERS > 1:
            cmd[3:3] = ["--workers", str(WORKERS)]
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(cmd, cwd=base.EXAMPLE, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        base.CLEANUP.push("uvicorn", lambda p=proc: stop(p))
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if base.http_get(port, "/health", timeout=2)[0] == 200:
                    return proc, port
            except OSError:
                pass
            time.sleep(0.05)
        stop(proc)
    raise RuntimeError(f"uvicorn did not start; log:\n{log_path.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def run_wrk(port: int, script: Path, seconds: int, connections: int = CONNECTIONS) -> dict[str, Any]:
    cmd = [shutil.which("wrk") or "wrk", "-c", str(connections), "-t", str(THREADS), "-d", f"{seconds}s",
           "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=seconds + 60).stdout.decode()
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[8:])
    raise RuntimeError(f"wrk failed:\n{out}")


def one_run(server: Server, monitor: base.Monitor, config: str, workload: str, rep: int, seconds: int,
            tmp: Path) -> Result:
    res = Result(config, workload, rep)
    leftover = monitor.wait_baseline()
    if leftover:
        res.note = f"{leftover} session(s) of an earlier run still open; "
    cfg, wl = CONFIGS[config], WORKLOADS[workload]
    proc, port = start_uvicorn(server, cfg.mode, tmp / f"uvicorn-{config}.log", cfg.pool_options)
    try:
        for i in range(20):  # warm-up: code paths loaded, the pool (if any) opened
            path = wl.path if wl.fixed else f"{wl.path}{i + 1}"
            status, _ = base.http_get(port, path, timeout=30)
            if status != 200:
                raise RuntimeError(f"warm-up {path} answered {status}")
        script = tmp / f"wrk-{workload}.lua"
        script.write_text(LUA.replace("__PREFIX__", wl.path).replace("__MAX_ID__", str(base.SEED_ROWS))
                          .replace("__FIXED__", "true" if wl.fixed else "false"))
        # Warm-up under load: the pool grows to its size before the counters start.
        run_wrk(port, script, 1, wl.connections)
        server_pids = [server.pid] if server.pid else []
        # With --workers, the supervisor's children serve; warm-up has started them all.
        uvicorn_pids = [proc.pid, *base.children(proc.pid)]
        ucpu0, scpu0 = base.cpu_seconds(uvicorn_pids), base.cpu_seconds(server_pids)
        q0, a0, c0 = monitor.counters()
        monitor.start_sampling()
        try:
            w = run_wrk(port, script, seconds, wl.connections)
        finally:
            res.peak_sessions = monitor.stop_sampling()
        q1, a1, c1 = monitor.counters()
        ucpu1, scpu1 = base.cpu_seconds(uvicorn_pids), base.cpu_seconds(server_pids)
        time.sleep(LEAK_WAIT)  # still serving nothing: what stays connected is kept, not in flight
        res.leftover_sessions = monitor.threads_connected() - monitor.run_baseline
        if proc.poll() is not None:
            res.note += "uvicorn died; "
    finally:
        stop(proc)
    res.requests, res.errors = w["requests"], w["errors"] + w["status"]
    duration = w["duration_us"] / 1e6
    res.rps = (res.requests - w["status"]) / duration if duration else 0.0
    res.p50_ms, res.p99_ms = w["p50_us"] / 1000, w["p99_us"] / 1000
    res.new_connections = c1 - c0
    if res.requests:
        res.commands_per_request = ((q1 - q0) + (a1 - a0)) / res.requests
        # CPU time per request: far less disturbed than req/s by other load on the machine.
        res.uvicorn_cpu_ms_per_request = 1000 * (ucpu1 - ucpu0) / res.requests
        if server_pids:
            res.server_cpu_ms_per_request = 1000 * (scpu1 - scpu0) / res.requests
    return res


def summary(results: list[Result], plan: list[tuple[str, list[str]]]) -> str:
    """The table (medians over repetitions; sessions and commands min-max) and the targets' verdicts."""
    lines = ["| workload | configuration | req/s | vs stock | p99 ms | peak sessions | sessions 5 s after "
             "| new connections/req | commands/req | uvicorn CPU ms/req | uvicorn CPU vs stock | MariaDB CPU ms/req "
             "| errors |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    med: dict[tuple[str, str], dict[str, float]] = {}
    for wk, configs in plan:
        for ck in configs:
            rs = [r for r in results if r.workload == wk and r.config == ck]
            if rs:
                med[(wk, ck)] = {"rps": statistics.median(r.rps for r in rs),
                                 "cpu": statistics.median(r.uvicorn_cpu_ms_per_request for r in rs)}
    verdicts = []
    for wk, configs in plan:
        stock = med.get((wk, "stock"))
        for ck in configs:
            rs = [r for r in results if r.workload == wk and r.config == ck]
            if not rs:
                continue
            m = med[(wk, ck)]
            reqs = sum(r.requests for r in rs)
            lines.append(
                f"| {WORKLOADS[wk].label} | {CONFIGS[ck].label} | {m['rps']:,.0f} "
                f"| {m['rps'] / stock['rps'] if stock else float('nan'):.2f}x "
                f"| {statistics.median(r.p99_ms for r in rs):.1f} "
                f"| {min(r.peak_sessions for r in rs)}-{max(r.peak_sessions for r in rs)} "
                f"| {min(r.leftover_sessions for r in rs)}-{max(r.leftover_sessions for r in rs)} "
                f"| {sum(r.new_connections for r in rs) / reqs if reqs else float('nan'):.3f} "
                f"| {min(r.commands_per_request for r in rs):.2f}-{max(r.commands_per_request for r in rs):.2f} "
                f"| {m['cpu']:.2f} | {stock['cpu'] / m['cpu'] if stock else float('nan'):.2f}x "
                f"| {statistics.median(r.server_cpu_ms_per_request for r in rs):.2f} "
                f"| {sum(r.errors for r in rs)} |")
            if ck.startswith("autopool"):
                stock_runs = {r.rep: r.rps for r in results if r.workload == wk and r.config == "stock"}
                per_rep = [r.rps / stock_runs[r.rep] for r in rs if stock_runs.get(r.rep)]
                verdicts.append(_verdict(wk, ck, rs, m, stock, med.get((wk, "autopool")), per_rep))
    return "\n".join(lines + [""] + [v for v in verdicts if v])


def _verdict(wk: str, ck: str, rs: list[Result], m: dict[str, float], stock: dict[str, float] | None,
             request_mode: dict[str, float] | None, per_rep: list[float]) -> str:
    """Issue 18's target for autopool on the one-SELECT workloads; issue 20's for transaction mode on qwq."""
    peak = max(r.peak_sessions for r in rs)
    cpr = max(r.commands_per_request for r in rs)
    errors = sum(r.errors for r in rs)
    if not wk.startswith("qwq") and stock:
        # The median of each repetition's own ratio: the two runs of a repetition are seconds
        # apart, the medians of all runs minutes apart, and this machine's speed drifts.
        gain = statistics.median(per_rep) if per_rep else m["rps"] / stock["rps"]
        cap = WORKERS * POOL_SIZE
        ok = gain >= 1.2 and peak <= cap and cpr <= 1.05 and not errors
        spread = f" (by repetition {min(per_rep):.2f}-{max(per_rep):.2f}x)" if len(per_rep) > 1 else ""
        return (f"- {WORKLOADS[wk].label}, {ck}: {gain:.2f}x stock CONN_MAX_AGE=0 req/s{spread}, median of "
                f"the repetitions' ratios (target >= 1.2x; uvicorn "
                f"CPU per request {stock['cpu'] / m['cpu']:.2f}x lower), peak sessions {peak} (<= {cap}), "
                f"{cpr:.2f} commands/request (<= 1.05), {errors} errors: {'MET' if ok else 'NOT MET'}")
    if wk.startswith("qwq") and ck == "autopool-tx" and request_mode:
        gain = m["rps"] / request_mode["rps"]
        vs_stock = f", {m['rps'] / stock['rps']:.2f}x stock CONN_MAX_AGE=0" if stock else ""
        return (f"- {WORKLOADS[wk].label}: transaction mode {gain:.2f}x request mode req/s{vs_stock}; peak sessions "
                f"{peak} (<= {WORKERS * POOL_SIZE}), {cpr:.2f} commands/request, {errors} errors")
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repetition of 5 s per run")
    parser.add_argument("--duration", type=int, help="seconds of load per run (default 10, --quick 5)")
    parser.add_argument("--repeats", type=int, help="repetitions (default 3, --quick 1)")
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn worker processes (default 1; each has its own pool)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"subset of {','.join(WORKLOADS)}")
    parser.add_argument("--output", help="Markdown report path (default bench/results/asgi.md; "
                        "with --workers N: asgi-workersN.md)")
    args = parser.parse_args(argv)
    global WORKERS
    WORKERS = args.workers
    duration = args.duration or (5 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)
    configs = [c for c in args.configs.split(",") if c]
    workloads = [w for w in args.workloads.split(",") if w]
    for name, known in [(c, CONFIGS) for c in configs] + [(w, WORKLOADS) for w in workloads]:
        if name not in known:
            parser.error(f"unknown {name!r}; choose from {', '.join(known)}")
    if shutil.which("wrk") is None:
        print("bench: wrk not found: run `bash scripts/bootstrap.sh` or `apt-get install wrk`", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, base._raise_interrupt)
    started, load_before = time.monotonic(), base._loadavg()
    tmp = Path(tempfile.mkdtemp(prefix="autopool-bench-asgi-"))
    base.CLEANUP.push("temporary files", lambda: shutil.rmtree(tmp, ignore_errors=True))
    results: list[Result] = []
    try:
        server = Server.from_env_or_start()
        base.CLEANUP.push("MariaDB", server.stop)
        version = server.execute("SELECT VERSION()")[0][0]
        base.log(f"bench asgi: {version}; seeding {base.SEED_ROWS} rows")
        base.prepare_database(server)
        monitor = base.Monitor(server)
        base.CLEANUP.push("monitor connection", monitor.close)
        plan = [(wk, [c for c in PLAN[wk] if c in configs]) for wk in workloads]
        # Unlike bench/run.py's gevent runs, stock runs are interleaved with autopool's (no
        # configuration put last): under ASGI a run right after a stock one was not slower
        # (autopool at 396 req/s median after a stock run, 393 otherwise, in 8 alternating pairs),
        # while the machine's speed drifts by 20% over minutes, so a stock block run minutes after
        # autopool's compared different machines (1.09x against 1.27x interleaved).
        for rep, wk, ck in base.schedule(plan, repeats, lambda ck: False):
            r = one_run(server, monitor, ck, wk, rep, duration, tmp)
            results.append(r)
            base.log(f"    rep {rep + 1} {wk:<6} {ck:<11} {r.rps:8,.0f} req/s  p99 {r.p99_ms:7.1f} ms  "
                     f"peak {r.peak_sessions:4}  after 5 s {r.leftover_sessions:4}  "
                     f"commands/req {r.commands_per_request:5.2f}  cpu ms/req uvicorn "
                     f"{r.uvicorn_cpu_ms_per_request:.2f} server {r.server_cpu_ms_per_request:.2f}  "
                     f"errors {r.errors}  {r.note}")
        output = args.output or str(base.RESULTS / ("asgi.md" if WORKERS == 1 else f"asgi-workers{WORKERS}.md"))
        write_report(Path(output), results, plan, duration, repeats, version, load_before, started)
        return 0
    except KeyboardInterrupt:
        print("\nbench asgi: interrupted; stopping what was started ...", file=sys.stderr)
        return 130
    finally:
        base.CLEANUP.run()


def write_report(out: Path, results: list[Result], plan: list[tuple[str, list[str]]], duration: int,
                 repeats: int, version: str, load_before: str, started: float) -> None:
    """The Markdown report and its JSON."""
    import uvicorn

    table = summary(results, plan)
    processes = "one process" if WORKERS == 1 else f"--workers {WORKERS}"
    text = "\n".join([
            "# ASGI benchmark (bench/asgi.py)", "",
        f"- uvicorn {uvicorn.__version__}, {processes}; `wrk -c {CONNECTIONS} -t {THREADS} -d {duration}s` "
        f"(qwq: `-c {TX_CONNECTIONS}`); {repeats} repetition(s), each running every configuration once in a "
        "rotated order, stock ones included; "
        f"mysqlclient; {version}.",
        f"- {base._versions()}",
        f"- Load average at the start: {load_before}; at the end: {base._loadavg()} (a busy machine "
        "lowers and scatters req/s; the session and command counts do not depend on it).",
        "- req/s, p99 and CPU ms/req (user+system time of the uvicorn processes and of mariadbd over the "
        "load, per request): median over repetitions; sessions and commands/req: min-max.", "", table, ""])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(text)
    base.log(f"bench asgi: wrote {out} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
