#!/usr/bin/env python
"""HTTP load benchmark of autopool against Django's stock MySQL connections.

One command, from the repository root (``bench`` and ``tests`` are packages of it)::

    python -m bench.run            # full run (about 19 minutes)
    python -m bench.run --quick    # one short repetition (about 2 minutes)
    python -m bench.run --demo     # the README's demo: stock vs autopool, under a minute

It starts a throw-away MariaDB (``tests/mariadb.py``; an external server when
``AUTOPOOL_TEST_MYSQL_HOST`` is set), creates the example database, migrates
and seeds it, then for every configuration and workload starts
``example_project`` under ``gunicorn -k gevent -w 1`` on a free loopback port,
drives it with ``wrk -c 100 -t 2 --latency`` while a side connection samples
``Threads_connected`` every 50 ms, and reads the server's command counters
before and after (the side connection's own statements excluded). Workloads:
``/item/<id>`` (one query), the same with 1 ms think time, ``/sleep?ms=50``,
and ``qwq`` (a query, 50 ms elsewhere, a query: request mode against
``pool_mode="transaction"``). Every configuration runs once per repetition,
interleaved, stock ``CONN_MAX_AGE=0`` runs after the others (``schedule()``),
each run on a fresh gunicorn. Results: ``bench/results/latest.md`` (+ ``.json``, + ``.png``, drawn
with matplotlib, which is installed into the running virtualenv if missing).
Everything it started is stopped on exit, Ctrl-C or error.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.mariadb import Server, free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_project"
RESULTS = ROOT / "bench" / "results"

DB_NAME = "autopool_example"
SEED_ROWS = 10_000
CONNECTIONS = 100
THREADS = 2
SAMPLE_INTERVAL = 0.05
POOL_SIZE = 10


@dataclass(frozen=True)
class Config:
    key: str
    mode: str      # EXAMPLE_MODE: stock | persistent | autopool
    driver: str    # EXAMPLE_DRIVER: mysqlclient | pymysql
    label: str
    pool_options: dict[str, Any] | None = None  # merged into POOL (autopool configs)
    pool_size: int = POOL_SIZE


CONFIGS: dict[str, Config] = {c.key: c for c in (
    Config("stock", "stock", "mysqlclient", "stock CONN_MAX_AGE=0"),
    Config("persistent", "persistent", "mysqlclient", "stock persistent (CONN_MAX_AGE=None)"),
    Config("autopool", "autopool", "mysqlclient", f"autopool pool_size={POOL_SIZE}"),
    Config("stock-pymysql", "stock", "pymysql", "stock CONN_MAX_AGE=0"),
    Config("persistent-pymysql", "persistent", "pymysql", "stock persistent (CONN_MAX_AGE=None)"),
    Config("autopool-pymysql", "autopool", "pymysql", f"autopool pool_size={POOL_SIZE}"),
    # The qwq workload's: POOL["pool_mode"] = "transaction" (issue 20).
    Config("autopool-tx", "autopool", "mysqlclient", f"autopool transaction mode, pool_size={POOL_SIZE}",
           {"pool_mode": "transaction"}),
    Config("autopool-tx-pymysql", "autopool", "pymysql", f"autopool transaction mode, pool_size={POOL_SIZE}",
           {"pool_mode": "transaction"}),
    # Not run by default (--configs NAME,...): variants for investigating.
    Config("autopool-nocoop", "autopool", "mysqlclient", f"autopool pool_size={POOL_SIZE}, cooperative=False",
           {"cooperative": False}),
    Config("autopool-100", "autopool", "mysqlclient", "autopool pool_size=100", pool_size=100),
    Config("autopool-pymysql-100", "autopool", "pymysql", "autopool pool_size=100", pool_size=100),
    # The README's quickstart POOL, for the moderate-load regime (run_quickstart_regime).
    Config("autopool-quickstart", "autopool", "mysqlclient", "autopool quickstart POOL (5+10)",
           {"max_overflow": 10}, pool_size=5),
    Config("autopool-quickstart-pymysql", "autopool", "pymysql", "autopool quickstart POOL (5+10)",
           {"max_overflow": 10}, pool_size=5),
    Config("autopool-quickstart-elastic", "autopool", "mysqlclient", "quickstart POOL (5+10), DjangoQueuePool",
           {"max_overflow": 10, "django_pool_class": "autopool.pool.DjangoQueuePool"}, pool_size=5),
)}
DEFAULT_CONFIGS = ["stock", "persistent", "autopool", "stock-pymysql", "persistent-pymysql", "autopool-pymysql"]
# "query, 50 ms elsewhere, query": request mode, transaction mode, stock persistent and stock, per driver.
QWQ_CONFIGS = ["autopool", "autopool-tx", "persistent", "stock",
               "autopool-pymysql", "autopool-tx-pymysql", "persistent-pymysql", "stock-pymysql"]
# Transaction mode / request mode on qwq that issue 20 asks for, per driver.
QWQ_TARGETS = (("autopool-tx", "autopool", 4.0), ("autopool-tx-pymysql", "autopool-pymysql", 3.5))


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    path: str | None      # None: /item/<random id>
    think_ms: int = 0
    connections: int = CONNECTIONS  # wrk -c


WORKLOADS: dict[str, Workload] = {w.key: w for w in (
    Workload("item", "/item/<random id> (one query)", None),
    Workload("item-think", "/item/<random id>, 1 ms think time (wrk delay())", None, think_ms=1),
    Workload("sleep50", "/sleep?ms=50 (SELECT SLEEP(0.05))", "/sleep?ms=50"),
    Workload("qwq", "/tx/query-wait-query?ms=50 (a query, 50 ms elsewhere, a query)", "/tx/query-wait-query?ms=50"),
    # Not in the default set: the quickstart regime's load, between pool_size (5) and the cap (15).
    Workload("item-c9", "/item/<random id>, 9 concurrent clients", None, connections=9),
)}
DEFAULT_WORKLOADS = ["item", "item-think", "sleep50", "qwq"]
Plan = list[tuple[str, list[str]]]  # (workload, the configurations run on it)


def default_configs(workload: str) -> list[str]:
    return list(QWQ_CONFIGS if workload == "qwq" else DEFAULT_CONFIGS)


@dataclass
class RunResult:
    config: str
    workload: str
    rep: int
    ok: bool = True
    note: str = ""
    requests: int = 0
    ok_requests: int = 0
    duration_s: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors: int = 0
    error_detail: dict[str, int] = field(default_factory=dict)
    peak_connections: int = 0
    commands: int = 0
    commands_per_request: float = 0.0
    questions: int = 0
    admin_commands: int = 0
    new_connections: int = 0
    worker_cpu_ms_per_request: float = float("nan")
    server_cpu_ms_per_request: float = float("nan")
    pool_stats: list | None = None


# --------------------------------------------------------------------------- cleanup

class Cleanup:
    """Everything started here, stopped in reverse order exactly once."""

    def __init__(self) -> None:
        self._items: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    def push(self, name: str, fn: Any) -> None:
        with self._lock:
            self._items.append((name, fn))

    def remove(self, fn: Any) -> None:
        with self._lock:
            self._items = [(n, f) for n, f in self._items if f is not fn]

    def run(self) -> None:
        while True:
            with self._lock:
                if not self._items:
                    return
                name, fn = self._items.pop()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                print(f"bench: stopping {name} failed: {exc}", file=sys.stderr)


CLEANUP = Cleanup()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------- helpers

def log(msg: str) -> None:
    print(msg, flush=True)


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU time of these processes so far (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def server_env(server: Server) -> dict[str, str]:
    env = dict(os.environ)
    env.update(server.env())
    env["EXAMPLE_DB_NAME"] = DB_NAME
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def prepare_database(server: Server) -> None:
    server.create_database(DB_NAME)
    env = server_env(server)
    env.update(EXAMPLE_MODE="stock", EXAMPLE_DRIVER="mysqlclient")
    proc = subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=EXAMPLE, env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError("migrate failed:\n" + proc.stdout.decode(errors="replace"))
    conn = server.admin_connect(database=DB_NAME)
    try:
        cur = conn.cursor()
        for start in range(1, SEED_ROWS + 1, 1000):
            rows = [(f"item-{i}", i) for i in range(start, min(start + 1000, SEED_ROWS + 1))]
            cur.executemany("INSERT INTO shop_item (name, value) VALUES (%s, %s)", rows)
        conn.commit()
    finally:
        conn.close()


# --------------------------------------------------------------------------- server-side counters

class Monitor:
    """A side connection: Threads_connected sampling and command counters.

    Every statement of this session is itself counted in the server's global
    ``Questions``; reading the session's own ``Questions`` in the same statement
    as the global ones makes the subtraction exact.
    """

    COUNTERS_SQL = (
        "SELECT"
        " (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME='QUESTIONS'),"
        " (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME='COM_ADMIN_COMMANDS'),"
        " (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME='CONNECTIONS'),"
        " (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME='QUESTIONS'),"
        " (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME='COM_ADMIN_COMMANDS')"
    )
    THREADS_SQL = "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME='THREADS_CONNECTED'"

    def __init__(self, server: Server) -> None:
        self.conn = server.admin_connect()
        self.conn.autocommit(True)
        self.lock = threading.Lock()
        self.baseline = self.run_baseline = self.threads_connected()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak = 0

    def _one(self, sql: str) -> tuple[Any, ...]:
        with self.lock:
            cur = self.conn.cursor()
            cur.execute(sql)
            row = cur.fetchone()
            cur.close()
            return row

    def threads_connected(self) -> int:
        return int(self._one(self.THREADS_SQL)[0])

    def counters(self) -> tuple[int, int, int]:
        """(foreign questions, foreign admin commands, connections) so far."""
        q, adm, conns, own_q, own_adm = (int(v) for v in self._one(self.COUNTERS_SQL))
        return q - own_q, adm - own_adm, conns

    def wait_baseline(self, timeout: float = 15.0) -> int:
        """Poll until the previous run's connections are gone; return what is left over.

        The run's baseline (this connection plus clients that are not ours) is then
        taken again, so peaks count only the connections opened during the run.
        """
        deadline = time.monotonic() + timeout
        while True:
            n = self.threads_connected()
            if n <= self.baseline or time.monotonic() > deadline:
                leftover = n - self.baseline
                self.run_baseline = n
                return leftover
            time.sleep(SAMPLE_INTERVAL)

    def start_sampling(self) -> None:
        self.peak = 0
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.peak = max(self.peak, self.threads_connected() - self.run_baseline)
                except Exception as exc:  # noqa: BLE001
                    print(f"bench: sampler: {exc}", file=sys.stderr)
                    return
                self._stop.wait(SAMPLE_INTERVAL)

        self._thread = threading.Thread(target=loop, name="threads-connected-sampler", daemon=True)
        self._thread.start()

    def stop_sampling(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peak

    def close(self) -> None:
        self.stop_sampling()
        self.conn.close()


# --------------------------------------------------------------------------- gunicorn

class Gunicorn:
    def __init__(self, server: Server, cfg: Config, logdir: Path, extra_pool_options: str | None) -> None:
        self.server, self.cfg, self.logdir = server, cfg, logdir
        self.extra_pool_options = extra_pool_options
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = logdir / f"gunicorn-{cfg.key}-{time.monotonic_ns()}.log"

    def start(self, timeout: float = 60.0) -> None:
        env = server_env(self.server)
        env.update(EXAMPLE_MODE=self.cfg.mode, EXAMPLE_DRIVER=self.cfg.driver)
        env.setdefault("EXAMPLE_LOG_LEVEL", "info")  # worker boots and exits in the log
        if self.cfg.mode == "autopool":
            env["EXAMPLE_POOL_SIZE"] = str(self.cfg.pool_size)
            options = dict(self.cfg.pool_options or {})
            if self.extra_pool_options:
                options.update(json.loads(self.extra_pool_options))
            if options:
                env["EXAMPLE_POOL_OPTIONS"] = json.dumps(options)
        for _attempt in range(5):
            self.port = free_port()
            cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--no-control-socket",
                   "-k", "gevent", "-w", "1", "--worker-connections", "1000",
                   "-b", f"127.0.0.1:{self.port}", "example_project.wsgi"]
            with open(self.log_path, "ab") as logf:
                self.proc = subprocess.Popen(cmd, cwd=EXAMPLE, env=env, stdin=subprocess.DEVNULL,
                                             stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
            CLEANUP.push(f"gunicorn {self.cfg.key}", self.stop)
            if self._wait_ready(timeout):
                return
            self.stop()
            if "Address already in use" not in self.log_tail():
                break
        raise RuntimeError(f"gunicorn ({self.cfg.key}) did not become ready; log:\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                status, _ = http_get(self.port, "/health", timeout=2)
                if status == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def log_tail(self, n: int = 30) -> str:
        try:
            return "".join(self.log_path.read_text(errors="replace").splitlines(True)[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        CLEANUP.remove(self.stop)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        else:
            # The master is gone; make sure no orphaned worker of its group is left behind.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------------- wrk

LUA = r"""
-- generated by bench/run.py
local max_id = __MAX_ID__
local think_ms = __THINK__
local fixed_path = __PATH__
local counter = 0
local threads = {}

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 97 + (tid or 0) * 7919)
  if fixed_path then wrk.path = fixed_path end
end

if not fixed_path then
  request = function()
    return wrk.format("GET", "/item/" .. math.random(1, max_id))
  end
end

if think_ms > 0 then
  delay = function() return think_ms end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def lua_script(workload: Workload, directory: Path) -> Path:
    path = directory / f"wrk-{workload.key}.lua"
    text = (LUA.replace("__MAX_ID__", str(SEED_ROWS)).replace("__THINK__", str(workload.think_ms))
            .replace("__PATH__", json.dumps(workload.path) if workload.path else "nil"))
    path.write_text(text)
    return path


class Progress:
    """A one-line text progress bar while wrk runs."""

    def __init__(self, label: str, seconds: float, enabled: bool) -> None:
        self.label, self.seconds, self.enabled = label, seconds, enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _draw(self, elapsed: float, final: bool = False) -> None:
        width = 30
        frac = min(elapsed / self.seconds, 1.0) if self.seconds else 1.0
        filled = int(round(frac * width))
        bar = "#" * filled + "." * (width - filled)
        end = "\n" if final else ""
        sys.stderr.write(f"\r  {self.label:<44} [{bar}] {min(elapsed, self.seconds):4.1f}/{self.seconds:.0f} s{end}")
        sys.stderr.flush()

    def __enter__(self) -> Progress:
        if self.enabled:
            start = time.monotonic()

            tty = sys.stderr.isatty()

            def loop() -> None:
                # A terminal redraws the line 4 times a second; a log file gets a redraw each second.
                while not self._stop.wait(0.25 if tty else 1.0):
                    self._draw(time.monotonic() - start)

            self._draw(0)
            self._thread = threading.Thread(target=loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._draw(self.seconds, final=True)


def run_wrk(port: int, script: Path, seconds: int, label: str, progress: bool,
            connections: int = CONNECTIONS) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk not found: apt-get install wrk (scripts/bootstrap.sh installs it)")
    cmd = [wrk, "-c", str(connections), "-t", str(min(THREADS, connections)), "-d", f"{seconds}s", "--latency",
           "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}/"]
    with Progress(label, seconds, progress):
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        CLEANUP.push("wrk", proc.kill)
        try:
            out, _ = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        finally:
            CLEANUP.remove(proc.kill)
    text = out.decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("WRKJSON "):
            data = json.loads(line[len("WRKJSON "):])
            data["raw"] = text
            return data
    raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")


# --------------------------------------------------------------------------- one run

def one_run(server: Server, monitor: Monitor, cfg: Config, workload: Workload, rep: int, seconds: int,
            tmp: Path, progress: bool, extra_pool_options: str | None) -> RunResult:
    res = RunResult(cfg.key, workload.key, rep)
    leftover = monitor.wait_baseline()
    if leftover > 0:
        res.note += f"{leftover} connection(s) of an earlier run still open; "
    g = Gunicorn(server, cfg, tmp, extra_pool_options)
    try:
        g.start()
        warm_up(g, workload)
        workers = children(g.proc.pid) if g.proc else []
        server_pids = [server.pid] if server.pid else []
        wcpu0, scpu0 = cpu_seconds(workers), cpu_seconds(server_pids)
        q0, a0, c0 = monitor.counters()
        monitor.start_sampling()
        try:
            w = run_wrk(g.port, lua_script(workload, tmp), seconds,
                        f"{cfg.key} ({cfg.driver}) {workload.key}", progress, workload.connections)
        finally:
            res.peak_connections = monitor.stop_sampling()
        q1, a1, c1 = monitor.counters()
        wcpu1, scpu1 = cpu_seconds(workers), cpu_seconds(server_pids)
        if cfg.mode == "autopool":
            try:
                status, body = http_get(g.port, "/stats", timeout=10)
                if status == 200:
                    res.pool_stats = json.loads(body)["pools"]
            except (OSError, ValueError):
                pass
        if g.proc is None or g.proc.poll() is not None:
            res.note += "gunicorn died; "
    except (RuntimeError, OSError, http.client.HTTPException) as exc:
        res.ok = False
        res.note += f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"bench: {cfg.key} {workload.key} failed: {exc}", file=sys.stderr)
        return res
    finally:
        g.stop()
    record_load(res, w, (q1 - q0, a1 - a0, c1 - c0))
    if res.requests and workers:
        res.worker_cpu_ms_per_request = 1000 * (wcpu1 - wcpu0) / res.requests
    if res.requests and server_pids:
        res.server_cpu_ms_per_request = 1000 * (scpu1 - scpu0) / res.requests
    if res.errors or res.requests == 0:
        keep_logs(res, g, w, f"{cfg.key}-{workload.key}-{rep + 1}")
    if res.requests == 0:
        res.ok = False
        res.note += "no request completed; "
    return res


def warm_up(g: Gunicorn, workload: Workload) -> None:
    """Load the code paths of this view with a few sequential requests."""
    warm_path = workload.path or "/item/1"
    for _ in range(3 if workload.path else 20):
        status, body = http_get(g.port, warm_path, timeout=30)
        if status != 200:
            raise RuntimeError(f"warm-up request {warm_path} answered {status}: {body[:200]!r}; "
                               f"gunicorn log:\n{g.log_tail()}")


def record_load(res: RunResult, w: dict[str, Any], server_counts: tuple[int, int, int]) -> None:
    """wrk's figures and the server's command counts (questions, admin commands, connections) into ``res``."""
    res.requests = w["requests"]
    res.duration_s = w["duration_us"] / 1e6
    res.error_detail = {k: w[k] for k in ("connect", "read", "write", "status", "timeout") if w[k]}
    res.errors = sum(res.error_detail.values())
    res.ok_requests = max(res.requests - w["status"], 0)
    res.rps = res.ok_requests / res.duration_s if res.duration_s else 0.0
    if res.requests:
        res.p50_ms, res.p90_ms = w["p50_us"] / 1000, w["p90_us"] / 1000
        res.p99_ms, res.max_ms = w["p99_us"] / 1000, w["max_us"] / 1000
    res.questions, res.admin_commands, res.new_connections = server_counts
    res.commands = res.questions + res.admin_commands
    res.commands_per_request = res.commands / res.requests if res.requests else float("nan")


def keep_logs(res: RunResult, g: Gunicorn, w: dict[str, Any], name: str) -> None:
    """Keep what explains a run's errors: gunicorn's log and wrk's output."""
    keep = RESULTS / "logs"
    keep.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(g.log_path, keep / f"{name}-gunicorn.log")
    except OSError:
        pass
    (keep / f"{name}-wrk.txt").write_text(w.get("raw", ""))
    res.note += f"logs in bench/results/logs/{name}-*; "


# --------------------------------------------------------------------------- report

def med(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def fmt(v: float, digits: int = 0) -> str:
    if v != v or v in (float("inf"), float("-inf")):
        return "n/a"
    return f"{v:,.{digits}f}"


def fmtx(v: float, digits: int = 2) -> str:
    text = fmt(v, digits)
    return text if text == "n/a" else text + "x"


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def aggregate(results: list[RunResult], plan: Plan) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    by = {(r.config, r.workload, r.rep): r for r in results}
    reps = sorted({r.rep for r in results})
    for wk, configs in plan:
        for ck in configs:
            rs = [r for r in results if r.config == ck and r.workload == wk]
            good = [r for r in rs if r.ok]
            cfg = CONFIGS[ck]
            same_persistent = "persistent" if cfg.driver == "mysqlclient" else "persistent-pymysql"
            same_stock = "stock" if cfg.driver == "mysqlclient" else "stock-pymysql"

            def paired(base: str, attr: str) -> float:
                vals = []
                for rep in reps:
                    a, b = by.get((ck, wk, rep)), by.get((base, wk, rep))
                    if a and b and a.ok and b.ok:
                        vals.append(ratio(getattr(a, attr), getattr(b, attr)))
                return med(vals)

            out[(ck, wk)] = dict(
                runs=len(rs), failed=len(rs) - len(good),
                rps=med([r.rps for r in good]),
                rps_min=min((r.rps for r in good), default=float("nan")),
                rps_max=max((r.rps for r in good), default=float("nan")),
                p50=med([r.p50_ms for r in good]), p99=med([r.p99_ms for r in good]),
                p99_max=max((r.p99_ms for r in good), default=float("nan")),
                errors=sum(r.errors for r in rs),
                requests=sum(r.requests for r in rs),
                peak=max((r.peak_connections for r in good), default=0),
                cpr=med([r.commands_per_request for r in good]),
                new_conn_per_req=med([ratio(r.new_connections, r.requests) for r in good]),
                wcpu=med([r.worker_cpu_ms_per_request for r in good]),
                scpu=med([r.server_cpu_ms_per_request for r in good]),
                wcpu_vs_persistent=paired(same_persistent, "worker_cpu_ms_per_request"),
                rps_vs_stock=paired("stock", "rps"),
                rps_vs_same_stock=paired(same_stock, "rps"),
                rps_vs_persistent=paired(same_persistent, "rps"),
                p99_vs_stock=paired("stock", "p99_ms"),
                peak_vs_stock=paired("stock", "peak_connections"),
                cpr_vs_stock=paired("stock", "commands_per_request"),
                notes=sorted({r.note.strip() for r in rs if r.note.strip()}),
            )
    return out


def targets(agg: dict[tuple[str, str], dict[str, Any]], micro: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None, floor_ok: bool | None = None) -> str:
        if ok is None:
            return "not measured"
        if ok:
            return "PASS"
        if floor_ok:
            return "below target, above floor"
        return "FAIL"

    for ck, base in (("autopool", "persistent"), ("autopool-pymysql", "persistent-pymysql")):
        for wk in ("item", "item-think"):
            a = agg.get((ck, wk))
            if not a:
                continue
            r = a["rps_vs_persistent"]
            ok = None if r != r else r >= 1.0
            rows.append((f"{ck} req/s >= 1.0x {base} (floor 0.9x), {wk}", fmtx(r),
                         verdict(ok, None if r != r else r >= 0.9)))
            c = a["wcpu_vs_persistent"]
            if c == c:
                rows.append((f"(diagnostic) {ck} worker CPU per request vs {base}, {wk}", fmtx(c),
                             "lower is better"))
    for ck in ("autopool", "autopool-pymysql"):
        for wk in ("item", "item-think"):
            a = agg.get((ck, wk))
            if a:
                c = a["cpr"]
                rows.append((f"{ck} commands/request <= 1.05, {wk}", fmt(c, 3), verdict(None if c != c else c <= 1.05)))
    for ck in ("autopool", "autopool-pymysql"):
        a = agg.get((ck, "sleep50"))
        if a:
            r = a["rps"]
            rows.append((f"{ck} /sleep?ms=50 with pool_size=10 >= 160 req/s (0.8 x 200)", fmt(r, 1),
                         verdict(None if r != r else r >= 160)))
    for tx, req, need in QWQ_TARGETS:
        a, b = agg.get((tx, "qwq")), agg.get((req, "qwq"))
        if a and b:
            r = ratio(a["rps"], b["rps"])
            ok = None if r != r else (r >= need and a["peak"] <= POOL_SIZE and a["cpr"] <= 2.1 and not a["errors"])
            rows.append((f"{tx} >= {need}x {req} req/s on qwq, peak conns <= {POOL_SIZE}, <= 2.1 commands/req, "
                         "0 errors", f"{fmtx(r)}, {a['peak']}, {fmt(a['cpr'], 2)}, {a['errors']}", verdict(ok)))
    for ck in ("autopool", "autopool-pymysql"):
        worst = [agg[(ck, wk)]["p99_max"] for wk in WORKLOADS if (ck, wk) in agg and wk != "qwq"]
        worst = [w for w in worst if w == w]
        if worst:
            rows.append((f"{ck} p99 <= 1 s (worst run, all workloads)", f"{fmt(max(worst), 1)} ms",
                         verdict(max(worst) <= 1000)))
    if micro:
        for drv, m in micro.get("drivers", {}).items():
            r = m.get("django_vs_select1")
            if r is not None:
                rows.append((f"checkout+return <= 0.5x SELECT 1 ({drv})", f"{r:.2f}x", verdict(r <= 0.5)))
    return rows


def write_report(path: Path, results: list[RunResult], plan: Plan, args: argparse.Namespace, server_version: str,
                 micro: dict[str, Any] | None, chart: str | None, elapsed: float) -> str:
    agg = aggregate(results, plan)
    reps = len({r.rep for r in results})
    lines = report_header(args, server_version, reps, elapsed)
    for wk, configs in plan:
        lines += workload_table(agg, wk, configs, reps)
    lines += ["## Targets", "", "| target | measured | verdict |", "|---|---:|---|"]
    for name, value, verdict in targets(agg, micro):
        lines.append(f"| {name} | {value} | {verdict} |")
    lines.append("")
    if micro:
        lines += ["## Micro benchmark (`bench/micro.py`)", "", micro.get("markdown", ""), ""]
    lines += pool_counters_table(results) + every_run_table(results)
    lines.append(f"![chart]({chart})" if chart else
                 "Chart skipped: matplotlib is not available (`pip install matplotlib` for bench/results/latest.png).")
    lines.append("")
    text = "\n".join(lines)
    path.write_text(text)
    return text


def report_header(args: argparse.Namespace, server_version: str, reps: int, elapsed: float) -> list[str]:
    """The report's title and how it was measured."""
    return [
        "# autopool HTTP benchmark",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; wall time {elapsed:.0f} s; command: "
        f"`python -m bench.run {' '.join(sys.argv[1:])}`",
        f"- Machine: {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; server {server_version}; "
        f"{_versions()}; autopool at git {_git_state()}",
        f"- Load average (1/5/15 min) at the start: {args.load_before}; at the end: {_loadavg()} "
        "(anything above 0 besides this benchmark is other work competing for the same CPUs).",
        f"- Load: `wrk -c {CONNECTIONS} -t {THREADS} -d {args.duration}s --latency --timeout 10s` against "
        f"`gunicorn -k gevent -w 1 --worker-connections 1000` (one process), a fresh gunicorn per run, "
        f"{reps} repetition(s) interleaved, stock CONN_MAX_AGE=0 runs after the others (`schedule()`); wrk, "
        "gunicorn and MariaDB share the machine's CPUs.",
        f"- autopool: POOL = pool_size {POOL_SIZE}, max_overflow 0, timeout 30"
        + (f", plus {args.pool_options}" if args.pool_options else "") + "; CONN_MAX_AGE 0.",
        "- req/s counts responses with a 2xx/3xx status; values are medians over repetitions; ratios are "
        "taken within the same repetition, then the median; peak conns is the highest `Threads_connected` "
        "(sampled every 50 ms, sampler excluded); commands/request is the server's `Questions` + "
        "`Com_admin_commands` (pings) delta over the run divided by wrk's completed requests, the "
        "sampler's own statements excluded; worker/server CPU ms/req is the gunicorn worker's (MariaDB's) "
        "user+system CPU time over the run divided by the requests, a measure that machine load barely "
        "disturbs.",
        "",
    ]


def workload_table(agg: dict[tuple[str, str], dict[str, Any]], wk: str, configs: list[str], reps: int) -> list[str]:
    """One workload's table: a row per configuration, medians and ratios, then the runs' notes."""
    w = WORKLOADS[wk]
    lines = [f"## {w.label}", "",
              "| configuration | driver | req/s | p50 ms | p99 ms | errors | peak conns | commands/req "
              "| new conns/req | worker CPU ms/req | server CPU ms/req | req/s vs stock "
              "| req/s vs persistent (same driver) | worker CPU vs persistent | p99 vs stock "
              "| conns vs stock | commands vs stock |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for ck in configs:
        a = agg[(ck, wk)]
        c = CONFIGS[ck]
        failed = f" ({a['failed']}/{a['runs']} runs failed)" if a["failed"] else ""
        spread = f" ({fmt(a['rps_min'])}-{fmt(a['rps_max'])})" if reps > 1 and a['rps'] == a['rps'] else ""
        lines.append(
            f"| {c.label}{failed} | {c.driver} | {fmt(a['rps'])}{spread} | {fmt(a['p50'], 1)} | "
            f"{fmt(a['p99'], 1)} | {a['errors']} | {a['peak']} | {fmt(a['cpr'], 2)} | "
            f"{fmt(a['new_conn_per_req'], 2)} | {fmt(a['wcpu'], 3)} | {fmt(a['scpu'], 3)} | "
            f"{fmtx(a['rps_vs_stock'])} | {fmtx(a['rps_vs_persistent'])} | {fmtx(a['wcpu_vs_persistent'])} | "
            f"{fmtx(a['p99_vs_stock'])} | {fmtx(a['peak_vs_stock'])} | {fmtx(a['cpr_vs_stock'])} |")
    notes = [f"{ck}: {'; '.join(agg[(ck, wk)]['notes'])}" for ck in configs if agg[(ck, wk)]['notes']]
    if notes:
        lines += [""] + [f"- note: {n}" for n in notes]
    lines.append("")
    return lines


def pool_counters_table(results: list[RunResult]) -> list[str]:
    """autopool's counters after each run (the worker's ``autopool.stats()``)."""
    lines: list[str] = []
    pool_rows = [r for r in results if r.pool_stats]
    if pool_rows:
        lines += ["## autopool counters after each run (worker's `autopool.stats()`)", "",
                  "| run | opened | closed | invalidated | checkouts | waits | mean wait ms | max wait ms "
                  "| timeouts | rollbacks on return | leaks |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in pool_rows:
            for p in r.pool_stats or []:
                mean_wait = 1000 * p.get("wait_time_total", 0) / p["waits"] if p.get("waits") else 0
                lines.append(
                    f"| {r.config} {r.workload} #{r.rep + 1} | {p.get('connections_opened')} | "
                    f"{p.get('connections_closed')} | {p.get('connections_invalidated')} | {p.get('checkouts')} | "
                    f"{p.get('waits')} | {mean_wait:.1f} | {1000 * p.get('wait_time_max', 0):.1f} | "
                    f"{p.get('timeouts')} | {p.get('rollbacks_on_return')} | {p.get('leaks')} |")
        lines.append("")
    return lines


def every_run_table(results: list[RunResult]) -> list[str]:
    """One row per run, in the order they ran."""
    lines: list[str] = []
    lines += ["## Every run", "", "| rep | workload | configuration | req/s | p50 ms | p99 ms | max ms | errors "
              "| peak conns | questions | pings | new conns | requests | worker CPU ms/req | note |",
              "|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        err = ", ".join(f"{k} {v}" for k, v in r.error_detail.items()) or "0"
        lines.append(f"| {r.rep + 1} | {r.workload} | {r.config} | {fmt(r.rps)} | {fmt(r.p50_ms, 1)} | "
                     f"{fmt(r.p99_ms, 1)} | {fmt(r.max_ms, 1)} | {err} | {r.peak_connections} | {r.questions} | "
                     f"{r.admin_commands} | {r.new_connections} | {r.requests} | "
                     f"{fmt(r.worker_cpu_ms_per_request, 3)} | {r.note.strip()} |")
    lines.append("")
    return lines


def _git_state() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "autopool"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "no commit") + (" with local changes to autopool/" if dirty else "")


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def _versions() -> str:
    out = []
    for mod, name in (("django", "Django"), ("sqlalchemy", "SQLAlchemy"), ("gevent", "gevent"),
                      ("gunicorn", "gunicorn"), ("MySQLdb", "mysqlclient"), ("pymysql", "PyMySQL")):
        try:
            m = __import__(mod)
            v = getattr(m, "__version__", None)
            if mod == "MySQLdb":
                v = ".".join(str(x) for x in m.version_info[:3])
            if mod == "pymysql":
                v = ".".join(str(x) for x in m.VERSION[:3])
            out.append(f"{name} {v}")
        except Exception:  # noqa: BLE001
            pass
    return ", ".join(out)


def _pyplot() -> Any:
    """matplotlib's pyplot; installed into the running virtualenv (the project's .venv) on
    first use, so that one command gives the chart too. None when that is not possible."""
    try:
        import matplotlib
    except ImportError:
        if sys.prefix == sys.base_prefix:
            return None  # not a virtualenv: never install into a system Python
        print("bench: installing matplotlib for the chart", file=sys.stderr)
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode:
            print(f"bench: could not install matplotlib: {proc.stderr.strip()[-300:]}", file=sys.stderr)
            return None
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def make_chart(path: Path, results: list[RunResult], plan: Plan) -> str | None:
    plt = _pyplot()
    if plt is None:
        return None
    agg = aggregate(results, plan)
    workloads = [wk for wk, _ in plan]
    configs = list(dict.fromkeys(ck for _, cks in plan for ck in cks))
    metrics = (("rps", "requests/s (higher is better)"), ("p99", "p99 latency, ms (lower is better)"),
               ("peak", "peak server connections"), ("cpr", "server commands per request"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.5))
    width = 0.8 / max(len(configs), 1)
    for ax, (metric, title) in zip(axes, metrics):
        for i, ck in enumerate(configs):
            vals = [agg[(ck, wk)][metric] if (ck, wk) in agg else float("nan") for wk in workloads]
            vals = [0 if v != v else v for v in vals]
            xs = [j + (i - (len(configs) - 1) / 2) * width for j in range(len(workloads))]
            ax.bar(xs, vals, width, label=f"{ck}")
        ax.set_xticks(range(len(workloads)))
        ax.set_xticklabels(workloads)
        ax.set_title(title, fontsize=10)
        if metric in ("p99",):
            ax.set_yscale("log")
    handles, labels = axes[0].get_legend_handles_labels()
    # Below the panels, where it hides no bar.
    fig.legend(handles, labels, loc="lower center", ncol=len(configs), fontsize=9, frameon=False)
    fig.suptitle("autopool vs stock Django (gunicorn -k gevent -w 1, wrk -c 100)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


# --------------------------------------------------------------------------- micro

def run_micro(server: Server, quick: bool) -> dict[str, Any] | None:
    env = server_env(server)
    out = RESULTS / "micro.json"
    cmd = [sys.executable, "-m", "bench.micro", "--json", str(out)]
    if quick:
        cmd.append("--quick")
    proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text = proc.stdout.decode(errors="replace")
    print(text)
    if proc.returncode:
        return {"markdown": f"micro.py failed ({proc.returncode}):\n\n```\n{text[-3000:]}\n```", "drivers": {}}
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- main

# --------------------------------------------------------------------------- quickstart regime

QUICKSTART_CONFIGS = ("autopool-quickstart", "autopool-quickstart-pymysql", "autopool-quickstart-elastic")


def _monitor_execute(monitor: Monitor, sql: str) -> tuple[Any, ...] | None:
    with monitor.lock:
        cur = monitor.conn.cursor()
        cur.execute(sql)
        row = cur.fetchone() if cur.description else None
        cur.close()
        return row


def run_quickstart_regime(server: Server, monitor: Monitor, seconds: int, tmp: Path,
                          progress: bool) -> list[dict[str, Any]]:
    """The README's quickstart POOL (5+10) under 9 concurrent clients, between pool_size and the cap.

    Per driver: new server sessions per request after warm-up (``Connections``
    delta) and the peak of server sessions, sampled (``Threads_connected``) and
    exact (``Max_used_connections`` after ``FLUSH STATUS``, both less the
    connections open before the run).
    """
    rows = []
    for key in QUICKSTART_CONFIGS:
        monitor.wait_baseline()
        _monitor_execute(monitor, "FLUSH STATUS")  # Max_used_connections := connections open now
        r = one_run(server, monitor, CONFIGS[key], WORKLOADS["item-c9"], 0, seconds, tmp, progress, None)
        max_used = int(_monitor_execute(monitor, "SHOW GLOBAL STATUS LIKE 'Max_used_connections'")[1])
        pool_class = (CONFIGS[key].pool_options or {}).get("django_pool_class", "QueuePool").rsplit(".", 1)[-1]
        rows.append({"config": key, "driver": CONFIGS[key].driver, "pool_class": pool_class, "ok": r.ok, "note": r.note,
                     "requests": r.requests, "rps": r.rps, "errors": r.errors,
                     "new_sessions": r.new_connections,
                     "new_sessions_per_request": r.new_connections / r.requests if r.requests else float("nan"),
                     "peak_sampled": r.peak_connections, "peak_exact": max_used - monitor.run_baseline})
        log(f"    {key:<28} {fmt(r.rps):>7} req/s  {r.new_connections} new sessions for {r.requests} requests  "
            f"peak sessions {max_used - monitor.run_baseline} (cap 15)  {r.note}")
    return rows


def quickstart_report(rows: list[dict[str, Any]], seconds: int) -> str:
    lines = ["", "## README quickstart POOL (pool_size=5, max_overflow=10) at 9 concurrent clients", "",
             f"One gunicorn gevent worker, `wrk -c 9` on /item/<random id> for {seconds} s (between pool_size "
             "and the cap of 15). New sessions counted after warm-up (`Connections` delta); peak sessions "
             "from `Max_used_connections` after `FLUSH STATUS`, less the connections open before.", "",
             "| pool class | driver | requests | req/s | new server sessions | new sessions per request | "
             "peak sessions (cap 15) | errors |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['pool_class']} | {row['driver']} | {row['requests']} | {fmt(row['rps'])} | {row['new_sessions']} | "
                     f"{row['new_sessions_per_request']:.4f} | {row['peak_exact']} | {row['errors']} |")
    return "\n".join(lines) + "\n"


def demo_report(results: list[RunResult], configs: list[str]) -> str:
    agg = aggregate(results, [("item", configs)])
    rows = [("", "req/s", "p99 latency", "peak server conns", "commands/request", "new conns/request")]
    for ck in configs:
        a = agg[(ck, "item")]
        rows.append((CONFIGS[ck].label, fmt(a["rps"]), f"{fmt(a['p99'], 1)} ms", str(a["peak"]),
                     fmt(a["cpr"], 2), fmt(a["new_conn_per_req"], 2)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        out.append("  " + "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if n == 0:
            out.append("  " + "  ".join("-" * w for w in widths))
    if "autopool" in configs:
        a = agg[("autopool", "item")]
        out.append("")
        for base in ("stock", "persistent"):
            if base in configs:
                s = agg[(base, "item")]
                out.append(f"  autopool vs {base + ':':<11} {fmt(ratio(a['rps'], s['rps']), 2)}x requests/s, "
                           f"{fmt(ratio(a['p99'], s['p99']), 2)}x p99 latency, "
                           f"{a['peak']} vs {s['peak']} server connections, "
                           f"{fmt(a['cpr'], 2)} vs {fmt(s['cpr'], 2)} server commands per request")
    errors = {ck: agg[(ck, 'item')]['errors'] for ck in configs if agg[(ck, 'item')]['errors']}
    if errors:
        out.append(f"  errors: {errors}")
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Plan]:
    """The options, with the defaults of the chosen mode filled in, and the workloads to run with their
    configurations."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repetition of 5 s per run")
    parser.add_argument("--demo", action="store_true",
                        help="short demo: stock, stock persistent and autopool (mysqlclient) on /item, with progress bars")
    parser.add_argument("--duration", type=int, help="seconds of load per run (default 10, --quick 5, --demo 5)")
    parser.add_argument("--repeats", type=int, help="repetitions (default 3, --quick/--demo 1)")
    parser.add_argument("--configs", help=f"comma-separated subset of {','.join(CONFIGS)} (default: "
                                          f"{','.join(DEFAULT_CONFIGS)}; for qwq {','.join(QWQ_CONFIGS)})")
    parser.add_argument("--workloads", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--pool-options", help='extra POOL options for the autopool configs, JSON, e.g. '
                                               '\'{"cooperative": true}\'')
    parser.add_argument("--no-micro", action="store_true", help="skip bench/micro.py")
    parser.add_argument("--no-regime", action="store_true", help="skip the quickstart-POOL regime")
    parser.add_argument("--regime-only", action="store_true",
                        help="only the README quickstart POOL (5+10) at 9 concurrent clients: QueuePool on "
                             "both drivers, DjangoQueuePool on mysqlclient")
    parser.add_argument("--output", default=str(RESULTS / "latest.md"), help="Markdown report path")
    parser.add_argument("--asgi", action="store_true", help="the ASGI benchmark instead (bench/asgi.py: uvicorn; "
                                                            "--quick/--duration/--repeats apply)")
    args = parser.parse_args(argv)
    if args.asgi:
        return args, []  # bench/asgi.py applies its own defaults
    if args.demo:
        configs: list[str] | None = ["stock", "persistent", "autopool"]
        workloads = ["item"]
        args.duration = args.duration or 5
        args.repeats = args.repeats or 1
        args.no_micro = True
    else:
        configs = None  # each workload's defaults
        workloads = list(DEFAULT_WORKLOADS)
        args.duration = args.duration or (5 if args.quick else 10)
        args.repeats = args.repeats or (1 if args.quick else 3)
    if args.configs:
        configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if args.workloads:
        workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for c in configs or ():
        if c not in CONFIGS:
            parser.error(f"unknown configuration {c!r}; choose from {', '.join(CONFIGS)}")
    for w in workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    if args.pool_options:
        json.loads(args.pool_options)
    return args, [(wk, list(configs) if configs else default_configs(wk)) for wk in workloads]


def schedule(plan: list[tuple[str, list[str]]], repeats: int, churns: Callable[[str], bool]) -> list[tuple[int, str, str]]:
    """The order of the runs: ``(repetition, workload, configuration)``.

    Configurations for which ``churns(name)`` is true (a new server session
    per request: stock ``CONN_MAX_AGE=0``; under ASGI stock persistent too)
    run after all the others. Runs right after one are slower for a minute
    or two, whatever they run (measured here: transaction mode at 526, 563,
    576, then 636 req/s in four runs after a stock PyMySQL run, 684 with none
    before), so interleaving them would charge that to whichever
    configuration happens to follow. Within each group, every repetition
    rotates the order of the configurations.
    """
    order: list[tuple[int, str, str]] = []
    for group in (False, True):
        for rep in range(repeats):
            for wk, configs in plan:
                chosen = [c for c in configs if churns(c) == group]
                k = rep % len(chosen) if chosen else 0
                order += [(rep, wk, ck) for ck in chosen[k:] + chosen[:k]]
    return order


def run_matrix(server: Server, monitor: Monitor, args: argparse.Namespace, plan: list[tuple[str, list[str]]],
               tmp: Path, progress: bool) -> list[RunResult]:
    """Every workload of ``plan`` with its configurations, ``args.repeats`` times (``schedule``)."""
    results: list[RunResult] = []
    order = schedule(plan, args.repeats, lambda ck: CONFIGS[ck].mode == "stock")
    total = len(order)
    log(f"bench: {total} runs of {args.duration} s: "
        + "; ".join(f"{wk}: {', '.join(configs)}" for wk, configs in plan)
        + f"; {args.repeats} repetition(s), stock CONN_MAX_AGE=0 runs last")
    for n, (rep, wk, ck) in enumerate(order, 1):
        cfg, workload = CONFIGS[ck], WORKLOADS[wk]
        if not progress:
            log(f"bench: [{n}/{total}] rep {rep + 1} {wk} {ck} ...")
        r = one_run(server, monitor, cfg, workload, rep, args.duration, tmp, progress, args.pool_options)
        results.append(r)
        log(f"    {ck:<20} {wk:<11} {fmt(r.rps):>7} req/s  p50 {fmt(r.p50_ms, 1):>7} ms  "
            f"p99 {fmt(r.p99_ms, 1):>7} ms  errors {r.errors:>5}  peak conns {r.peak_connections:>4}  "
            f"commands/req {fmt(r.commands_per_request, 2):>5}  "
            f"cpu ms/req {fmt(r.worker_cpu_ms_per_request, 3)}  {r.note}")
    return results


def write_outputs(results: list[RunResult], args: argparse.Namespace, plan: Plan, server_version: str, regime: list[dict[str, Any]] | None, micro: dict[str, Any] | None,
                  started: float) -> None:
    """The Markdown report (with the quickstart regime's table), its JSON and its chart."""
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    chart = make_chart(out.with_suffix(".png"), results, plan)
    (out.with_suffix(".json")).write_text(json.dumps(
        {"args": vars(args), "results": [r.__dict__ for r in results], "micro": micro,
         "quickstart_regime": regime}, indent=1, default=str))
    text = write_report(out, results, plan, args, server_version, micro, chart, time.monotonic() - started)
    if regime is not None:
        text += quickstart_report(regime, args.duration)
        out.write_text(text)
    print(text)
    log(f"bench: wrote {out} in {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args, plan = parse_args(argv)
    if args.asgi:
        from bench import asgi

        return asgi.main(["--quick"] * args.quick + ["--duration", str(args.duration)] * bool(args.duration)
                         + ["--repeats", str(args.repeats)] * bool(args.repeats))
    if shutil.which("wrk") is None:
        print("bench: wrk not found: run `bash scripts/bootstrap.sh` or `apt-get install wrk`", file=sys.stderr)
        return 2

    # SIGINT too: a shell starting this in the background leaves SIGINT ignored, and Python then
    # keeps it ignored; Ctrl-C, kill -INT, SIGTERM and a closed terminal must all stop everything.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    started = time.monotonic()
    args.load_before = _loadavg()
    progress = args.demo or sys.stderr.isatty()
    tmp = Path(tempfile.mkdtemp(prefix="autopool-bench-"))
    CLEANUP.push("temporary files", lambda: shutil.rmtree(tmp, ignore_errors=True))
    try:
        log("bench: starting MariaDB ..." if not os.environ.get("AUTOPOOL_TEST_MYSQL_HOST")
            else f"bench: using the server at {os.environ['AUTOPOOL_TEST_MYSQL_HOST']}")
        server = Server.from_env_or_start()
        CLEANUP.push("MariaDB", server.stop)
        server_version = server.execute("SELECT VERSION()")[0][0]
        log(f"bench: {server_version} on port {server.port}; creating {DB_NAME}, migrating, seeding {SEED_ROWS} rows")
        prepare_database(server)
        monitor = Monitor(server)
        CLEANUP.push("monitor connection", monitor.close)
        if args.regime_only:
            rows = run_quickstart_regime(server, monitor, args.duration, tmp, progress)
            out = Path(args.output).with_name("quickstart-regime.md")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(quickstart_report(rows, args.duration))
            out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
            print(out.read_text())
            return 0
        results = run_matrix(server, monitor, args, plan, tmp, progress)
        if args.demo:
            print("\nResult (one gunicorn gevent worker, wrk -c 100, /item/<random id>):\n")
            print(demo_report(results, plan[0][1]))
            print()
            return 0
        regime = None if args.no_regime else run_quickstart_regime(server, monitor, args.duration, tmp, progress)
        micro = None if args.no_micro else run_micro(server, args.quick)
        write_outputs(results, args, plan, server_version, regime, micro, started)
        return 0
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping what was started ...", file=sys.stderr)
        return 130
    finally:
        CLEANUP.run()


if __name__ == "__main__":
    sys.exit(main())
