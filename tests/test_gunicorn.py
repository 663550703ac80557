"""example_project under ``gunicorn -k gevent``, real server processes:

* concurrent HTTP clients: concurrency, the cap, and no failed request;
* README.rst's ``gunicorn.conf.py`` hooks, as written there: each worker's metrics port
  (``post_worker_init``), and a TERM to the master ending every server session of the workers'
  pools (``worker_exit``), measured on the server.
"""
from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests import djsettings, readme_examples
from tests.mariadb import free_port
from tests.scenario_main import wait_until

pytest.importorskip("gunicorn")
pytest.importorskip("gevent")

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"
DB = "autopool_example_test"
POOL_SIZE = 10
CLIENTS = 60
SLEEP_MS = 200


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


def readme_gunicorn_conf(path: Path, metrics_base: int) -> Path:
    """A gunicorn.conf.py made of README.rst's two hook examples, run as written except for the
    metrics ports (the README's 9200-9203 become four free ones)."""
    metrics = readme_examples.example("gunicorn_metrics")
    assert "range(9200, 9200 + 2 * worker.cfg.workers)" in metrics
    metrics = metrics.replace("range(9200, 9200 +", f"range({metrics_base}, {metrics_base} +")
    path.write_text("\n\n".join([
        'worker_class = "gevent"\nworkers = 2\ngraceful_timeout = 10\nerrorlog = "-"\nloglevel = "info"',
        readme_examples.example("gunicorn_shutdown"), metrics]))
    return path


def db_sessions(mariadb: Any, user: str) -> int:
    """Server sessions of the example's user on its database (nothing else the server runs)."""
    return int(mariadb.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s AND DB = %s",
                               (user, DB))[0][0])


def test_readme_hooks_with_the_gevent_worker_scrape_each_worker_and_end_every_session_on_term(mariadb, tmp_path):
    mariadb.create_database(DB)
    env = dict(os.environ, **mariadb.env(), EXAMPLE_DB_NAME=DB, EXAMPLE_MODE="autopool",
               EXAMPLE_DRIVER=djsettings.DRIVER, EXAMPLE_POOL_SIZE=str(POOL_SIZE), EXAMPLE_AUTOPOOL_LOG="INFO")
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=EXAMPLE, env=env,
                             capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    metrics_base, port = free_port(count=4), free_port()
    conf = readme_gunicorn_conf(tmp_path / "gunicorn.conf.py", metrics_base)
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(conf), "--no-control-socket",
                                 "-b", f"127.0.0.1:{port}", "example_project.wsgi"],
                                cwd=EXAMPLE, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def both_workers_scraped() -> dict[int, str]:
            bodies = {}
            for p in range(metrics_base, metrics_base + 4):
                try:
                    bodies[p] = get(p, "/metrics", timeout=2)[1].decode()
                except OSError:
                    pass
            return bodies if len(bodies) == 2 else {}

        assert proc.poll() is None, log_path.read_text()
        wait_until(both_workers_scraped, 60, "both workers' metrics ports")
        pool_metric = 'autopool_pool_size{alias="default",database="%s"} %d.0' % (DB, POOL_SIZE)
        statuses: list[Any] = []

        def requests_then_scrape() -> dict[int, str]:
            """Concurrent slow requests (each worker takes some and keeps its connections
            pooled); then both workers' metrics, once both show their pool."""
            def client() -> None:
                try:
                    statuses.append(get(port, f"/sleep?ms={SLEEP_MS}")[0])
                except OSError as exc:
                    statuses.append(repr(exc))

            clients = [threading.Thread(target=client) for _ in range(20)]
            for t in clients:
                t.start()
            for t in clients:
                t.join(60)
            bodies = both_workers_scraped()
            return bodies if all(pool_metric in body for body in bodies.values()) else {}

        wait_until(requests_then_scrape, 60, "both workers serving, each with its pool")
        assert set(statuses) == {200}
        user = mariadb.env()["AUTOPOOL_TEST_MYSQL_USER"]
        before = db_sessions(mariadb, user)
        assert before >= 2  # pooled connections, kept open between requests
        aborted = mariadb.status("Aborted_clients")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log_text = log_path.read_text(errors="replace")
    try:
        # The README's worker_exit ran in each worker ...
        assert log_text.count("Worker exiting") == 2, log_text
        assert log_text.count("disposed pool of 'default'") == 2, log_text
        # ... and ended each session with a goodbye, not a dropped socket, right away.
        assert db_sessions(mariadb, user) == 0
        print(f"\ngunicorn -k gevent -w 2, TERM: server sessions of the user {before} -> 0", file=sys.stderr)
        assert mariadb.status("Aborted_clients") == aborted, log_text
    finally:
        mariadb.execute(f"DROP DATABASE IF EXISTS {DB}")
