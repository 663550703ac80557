"""A real Celery 5 worker (``celery -A tests.celeryapp worker``) with a real broker (redis-server,
started and stopped here): the gevent pool with 200 concurrent one-query tasks holds the cap on the
server at one command per task; the prefork pool with ``max_tasks_per_child`` recycles children
without touching the parent's or the other children's sessions; the documented shutdown recipe
leaves no session and no aborted connection."""
from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import djsettings
from tests.servers import (
    ROOT,
    Process,
    ServerCounters,
    SessionSampler,
    example_env,
    prepare_example_db,
    sessions,
    start_redis,
    wait_for,
)

pytestmark = pytest.mark.gevent_subprocess  # separate processes: the plain runs cover them

celery = pytest.importorskip("celery")
DB = "autopool_celery_test"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    try:
        proc, port = start_redis(tmp_path)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        assert proc.stop() == 0, proc.output()[-2000:]


@pytest.fixture
def example_db(mariadb: Any) -> Iterator[str]:
    prepare_example_db(mariadb, DB, djsettings.DRIVER)
    yield DB
    # Whatever happened, the next test's server counters must not see this test's sessions end.
    wait_for(lambda: sessions(mariadb, DB) == 0, 30, "this test's sessions gone")
    mariadb.execute(f"DROP DATABASE IF EXISTS {DB}")


class Worker:
    def __init__(self, mariadb: Any, broker: str, tmp_path: Path, pool_size: int, *options: str,
                 preload_query: bool = False) -> None:
        self.cid_file = tmp_path / "parent-cid"
        env = example_env(mariadb, DB, djsettings.DRIVER, pool_size=pool_size, AUTOPOOL_TEST_BROKER=broker,
                          AUTOPOOL_TEST_MASTER_CID_FILE=str(self.cid_file))
        if preload_query:
            env["AUTOPOOL_TEST_PRELOAD_QUERY"] = "1"
        self.proc = Process([sys.executable, "-m", "celery", "-A", "tests.celeryapp", "worker", "-l", "INFO",
                             "--without-heartbeat", "--without-mingle", "--without-gossip", *options],
                            tmp_path / "worker.log", cwd=ROOT, env=env)
        self.client = celery.Celery(broker=broker, backend=broker)

    def run(self, name: str, args_list: list[list[Any]], timeout: float = 120) -> list[dict[str, Any]]:
        results = [self.client.send_task(f"tests.celeryapp.{name}", args=args) for args in args_list]
        try:
            return [r.get(timeout=timeout) for r in results]
        except Exception:
            print(self.proc.output()[-5000:])
            raise

    def stop(self) -> None:
        # SIGTERM: Celery's warm shutdown (running tasks finish, then the processes exit).
        status = self.proc.stop(signal.SIGTERM, timeout=60)
        self.client.close()
        assert status == 0, (status, self.proc.output()[-3000:])


def live_ids(mariadb: Any) -> set[int]:
    return {row[0] for row in mariadb.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s", [DB])}


def children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(x) for x in f.read().split()}
    except OSError:
        return set()


def test_gevent_pool_200_concurrent_tasks_capped_one_command_each(example_db: str, mariadb: Any, broker: str,
                                                                  tmp_path: Path) -> None:
    pytest.importorskip("gevent")
    pool_size, n = 5, 200
    worker = Worker(mariadb, broker, tmp_path, pool_size, "-P", "gevent", "-c", str(n))
    counters = ServerCounters(mariadb)
    try:
        worker.run("item", [[1]])  # the worker is up and its pool open
        counters.delta()
        sampler = SessionSampler(mariadb, DB)
        results = worker.run("sleep", [[50]] * n)
        peak = sampler.stop()
        assert len(results) == n and {r["pid"] for r in results} == {results[0]["pid"]}
        assert 2 <= peak <= pool_size, sampler.samples  # the cap held, the queries overlapped
        assert len({r["connection_id"] for r in results}) <= pool_size
        # Again, counted without the sampler's own queries: one command per one-query task.
        counters.delta()
        results = worker.run("sleep", [[50]] * n)
        d = counters.delta()
        assert len({r["connection_id"] for r in results}) <= pool_size
        assert n <= d["commands"] <= 1.05 * n, d
        assert d["Connections"] <= pool_size, d
        n_items = 50
        results = worker.run("item", [[i % 20 + 1] for i in range(n_items)])
        assert [r["id"] for r in results] == [i % 20 + 1 for i in range(n_items)]
        d = counters.delta()
        assert d["Connections"] == 0 and n_items <= d["commands"] <= 1.05 * n_items, d
    finally:
        try:
            worker.stop()
            wait_for(lambda: sessions(mariadb, DB) == 0, 15, "no session left after the worker's shutdown")
            shutdown = counters.delta()
        finally:
            counters.close()
    assert shutdown["Aborted_clients"] == 0, shutdown


def test_prefork_children_recycled_without_touching_parent_or_siblings(example_db: str, mariadb: Any,
                                                                       broker: str, tmp_path: Path) -> None:
    pool_size, concurrency, per_child = 2, 2, 5
    worker = Worker(mariadb, broker, tmp_path, pool_size, "-P", "prefork", "-c", str(concurrency),
                    "--max-tasks-per-child", str(per_child), preload_query=True)
    counters = ServerCounters(mariadb)
    try:
        first = worker.run("item", [[1]])[0]
        parent_pid, parent_cid = (int(x) for x in worker.cid_file.read_text().split())
        assert parent_pid == worker.proc.pid and first["pid"] != parent_pid
        assert first["connection_id"] != parent_cid  # a child never uses the parent's session
        n = 40
        sampler = SessionSampler(mariadb, DB)
        results = worker.run("item", [[i % 20 + 1] for i in range(n)])
        peak = sampler.stop()
        assert [r["id"] for r in results] == [i % 20 + 1 for i in range(n)]  # every task served
        pids = {r["pid"] for r in results}
        assert len(pids) >= n // per_child - 1, pids  # children were recycled
        assert parent_cid not in {r["connection_id"] for r in results}
        assert peak <= concurrency * pool_size + 1, sampler.samples  # the children's pools + the parent's
        # The parent's session survived every child's exit; the living children's sessions too.
        live = live_ids(mariadb)
        assert parent_cid in live, (parent_cid, live)
        # A child that ran fewer than max_tasks_per_child tasks is not being recycled: the session of
        # its last task is still open (one that reached the limit may be exiting right now).
        alive = children(worker.proc.pid)
        for pid in alive:
            ran = [x for x in [first] + results if x["pid"] == pid]
            if ran and len(ran) < per_child:
                assert ran[-1]["connection_id"] in live, (pid, ran, live)
        assert counters.delta()["Aborted_clients"] == 0  # recycled children closed their sessions
    finally:
        try:
            worker.stop()
            wait_for(lambda: sessions(mariadb, DB) == 0, 15, "no session left after the worker's shutdown")
            shutdown = counters.delta()
        finally:
            counters.close()
    assert shutdown["Aborted_clients"] == 0, shutdown


def test_documented_recipe_covers_the_main_process() -> None:
    """worker_process_shutdown fires in prefork children only: the main process of a gevent, threads
    or solo worker, and a prefork parent, close their pools on worker_shutdown."""
    from tests.docs_recipes import recipe

    source, where = recipe("worker_process_shutdown")
    assert "worker_shutdown" in source, f"{where}: the Celery recipe does not connect worker_shutdown"
