"""Real server processes for the tests (uvicorn, daphne, uWSGI, Celery, redis-server) and what the
database server says about them: sessions of one database, command counters.

Every process is started in its own session (process group) with its output in a log file, and
stopped by the test that started it: ``stop()`` sends the signal, waits, and kills the whole group if
it does not exit in time (the kill is a test failure: ``stop()`` returns the exit status).
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.mariadb import free_port
from tests.scenario_main import wait_until

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "example_project"
BIN = Path(sys.executable).parent


def http_get(port: int, path: str, timeout: float = 30.0) -> tuple[int, Any]:
    """GET; the status and the JSON body (or the raw body if it is not JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(body)
    except ValueError:
        return resp.status, body


class Process:
    """A server process in its own process group, its output in ``log``."""

    def __init__(self, cmd: Sequence[str], log: Path, cwd: Path = EXAMPLE,
                 env: dict[str, str] | None = None) -> None:
        self.cmd, self.log = list(cmd), log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal, wait; the exit status, or None if it had to be killed (with its group)."""
        status: int | None = self.proc.poll()
        if status is None:
            self.send_signal(sig)
            try:
                status = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                status = None
        if status is None or _group_alive(self.pid):
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._out.close()
        return status

    def wait_http(self, port: int, path: str = "/health", timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if http_get(port, path, timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if not self.alive():
                raise AssertionError(f"{self.cmd[:3]} exited ({self.proc.returncode}):\n{self.output()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.cmd[:3]} not ready within {timeout} s:\n{self.output()[-4000:]}")
            time.sleep(0.05)


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the test process dies (a killed or timed-out pytest
    must not leave servers behind; their own workers exit when their master is gone)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Only zombies left (reaped by nobody in a container) count as gone.
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def wait_for(predicate: Any, timeout: float, message: str) -> Any:
    """``tests.scenario_main.wait_until`` with the argument order these tests use."""
    return wait_until(predicate, timeout=timeout, message=message)


# -- the example project -----------------------------------------------------------------------

def example_env(server: Any, db: str, driver: str, mode: str = "autopool", pool_size: int = 10,
                **extra: str) -> dict[str, str]:
    env = dict(os.environ, **server.env(), EXAMPLE_DB_NAME=db, EXAMPLE_MODE=mode, EXAMPLE_DRIVER=driver,
               EXAMPLE_POOL_SIZE=str(pool_size), PYTHONPATH=str(ROOT), **extra)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def prepare_example_db(server: Any, db: str, driver: str, rows: int = 20) -> None:
    """The example's database, migrated, with ``rows`` items (ids 1..rows)."""
    server.create_database(db)
    proc = subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=EXAMPLE,
                          env=example_env(server, db, driver, mode="stock"), capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    conn = server.admin_connect(database=db)
    try:
        cur = conn.cursor()
        cur.executemany("INSERT INTO shop_item (name, value) VALUES (%s, %s)",
                        [(f"item-{i}", i) for i in range(1, rows + 1)])
        conn.commit()
    finally:
        conn.close()


# -- what the database server sees ---------------------------------------------------------------

def sessions(server: Any, db: str) -> int:
    """Server sessions whose current database is ``db`` (the application's, not the tests' own)."""
    return int(server.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s", [db])[0][0])


class SessionSampler:
    """Samples ``sessions(db)`` every 20 ms on its own connection, in a thread, until ``stop()``."""

    def __init__(self, server: Any, db: str) -> None:
        self.server, self.db = server, db
        self.samples: list[int] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="session-sampler")
        self._thread.start()

    def _run(self) -> None:
        try:
            conn = self.server.admin_connect()
            try:
                cur = conn.cursor()
                while not self._stop.is_set():
                    cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s", [self.db])
                    self.samples.append(int(cur.fetchone()[0]))
                    self._stop.wait(0.02)
            finally:
                conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.errors.append(exc)

    def stop(self) -> int:
        """The peak number of sessions seen."""
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "session sampler did not stop"
        assert not self.errors, self.errors
        assert self.samples, "no session sample taken"
        return max(self.samples)


COUNTERS = ("Questions", "Com_admin_commands", "Connections", "Aborted_clients")


class ServerCounters:
    """Global status counters read on a side connection, its own reads subtracted.

    ``commands`` = ``Questions`` (statements) + ``Com_admin_commands`` (pings, resets): every round
    trip a client makes. Meaningful while nothing else talks to the server.
    """

    def __init__(self, server: Any) -> None:
        self.conn = server.admin_connect()
        self.cur = self.conn.cursor()
        self.before = self.read()

    def read(self) -> dict[str, int]:
        self.cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN (%s)" % ", ".join(f"'{c}'" for c in COUNTERS))
        return {k: int(v) for k, v in self.cur.fetchall()}

    def delta(self) -> dict[str, int]:
        """Since the last ``delta()`` (or creation)."""
        after = self.read()
        d = {k: after[k] - self.before[k] for k in COUNTERS}
        d["Questions"] -= 1  # the SHOW STATUS that read ``after``
        d["commands"] = d["Questions"] + d["Com_admin_commands"]
        self.before = after
        return d

    def close(self) -> None:
        self.conn.close()


# -- a throw-away Redis (the Celery tests' broker) ---------------------------------------------------

def start_redis(directory: Path) -> tuple[Process, int]:
    """redis-server (Debian's package) on a free port, no persistence, in ``directory``."""
    import shutil

    binary = shutil.which("redis-server", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin",
                                                                 "/usr/sbin"]))
    if binary is None:
        raise FileNotFoundError("redis-server not found: apt-get install redis-server (scripts/bootstrap.sh)")
    for _ in range(5):
        port = free_port()
        proc = Process([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                        "--dir", str(directory), "--daemonize", "no"], directory / f"redis-{port}.log",
                       cwd=directory)
        deadline = time.monotonic() + 20
        while proc.alive() and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return proc, port
            except OSError:
                time.sleep(0.05)
        proc.stop()
    raise RuntimeError(f"redis-server did not start:\n{proc.output()[-2000:]}")
