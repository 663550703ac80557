"""example_project under ``gunicorn -k gevent`` with concurrent HTTP clients: concurrency,
the cap, and no failed request, through a real server process."""
from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests import djsettings

pytest.importorskip("gunicorn")
pytest.importorskip("gevent")

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"
DB = "autopool_example_test"
POOL_SIZE = 10
CLIENTS = 60
SLEEP_MS = 200


def free_port() -> int:
    for port in range(21000, 21400):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def get(port: int, path: str, timeout: float = 30.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def gunicorn_app(mariadb):
    mariadb.create_database(DB)
    env = dict(os.environ, **mariadb.env(), EXAMPLE_DB_NAME=DB, EXAMPLE_MODE="autopool",
               EXAMPLE_DRIVER=djsettings.DRIVER, EXAMPLE_POOL_SIZE=str(POOL_SIZE))
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=EXAMPLE, env=env,
                             capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--no-control-socket",
                             "-k", "gevent", "-w", "1", "-b", f"127.0.0.1:{port}", "example_project.wsgi"],
                            cwd=EXAMPLE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(port, "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            assert time.monotonic() < deadline, "gunicorn did not become ready"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        mariadb.execute(f"DROP DATABASE IF EXISTS {DB}")


def test_gevent_worker_serves_concurrent_sleeps_within_the_cap(gunicorn_app, mariadb):
    port = gunicorn_app
    samples, stop = [], threading.Event()

    def sample():
        conn = mariadb.admin_connect()
        try:
            cur = conn.cursor()
            while not stop.is_set():
                cur.execute(f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{DB}'")
                samples.append(int(cur.fetchone()[0]))
                stop.wait(0.02)
        finally:
            conn.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    statuses, start_line = [], threading.Barrier(CLIENTS + 1)

    def client():
        start_line.wait(30)
        try:
            statuses.append(get(port, f"/sleep?ms={SLEEP_MS}")[0])
        except OSError as exc:
            statuses.append(repr(exc))

    clients = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in clients:
        t.start()
    start_line.wait(30)
    began = time.monotonic()
    for t in clients:
        t.join(60)
    elapsed = time.monotonic() - began
    stop.set()
    sampler.join(10)
    assert statuses == [200] * CLIENTS  # zero failed requests
    assert max(samples) <= POOL_SIZE  # the cap, seen by the server
    assert max(samples) >= POOL_SIZE // 2  # ... and real concurrency in the database
    # 60 requests of 0.2 s through 10 connections: 1.2 s if they overlap, 12 s one by one.
    assert elapsed < 6, elapsed
