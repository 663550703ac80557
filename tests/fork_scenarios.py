"""fork() with pooled connections: each scenario in a fresh process, its child exiting the normal way.

Run as ``python -m tests.fork_scenarios NAME`` (under gevent: ``python -m gevent.monkey --module
tests.fork_scenarios NAME``) with the test server in ``AUTOPOOL_TEST_MYSQL_*``; prints one JSON
object, ``problems`` empty when every check held. ``tests/test_fork.py`` runs them.

A scenario's process is the parent: it holds five pooled sessions (three idle, one checked out by
the main thread's Django connection, one by a thread parked with its connection, whose Django
wrapper CPython frees in the child before any after-fork handler runs), forks, lets the child run
its checks and exit through the interpreter's normal shutdown (``sys.exit``, atexit, garbage
collection, module teardown: what a test in a pytest process cannot do), reaps it, then checks that
each of its five sessions still answers with the same CONNECTION_ID and that the server still lists
them. The child reports its own checks through a pipe; its exit status is checked too.
"""
from __future__ import annotations

import atexit
import gc
import json
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# In the child, CPython frees other threads' thread-local data (the holder thread's Django wrapper)
# before any after-fork handler runs. The wrapper is in reference cycles, so it is really freed at the
# next garbage collection, which may come at any allocation, before autopool's handler too: make it
# come first, as another library's handler registered earlier might.
os.register_at_fork(after_in_child=gc.collect)

DB = "autopool_fork"
POOL = {"pool_size": 5, "max_overflow": 0, "timeout": 10}
IDLE = 3
CHILD_TIMEOUT = 60.0


def gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("socket"))


def setup(name: str) -> Any:
    import django
    from django.conf import settings

    from tests import djsettings
    from tests.mariadb import Server

    djsettings.use_driver()
    server = Server.from_env_or_start()
    server.create_database(DB)
    replica = djsettings.database(server, DB, {"pool_size": 1, "replica_of": "default", "max_replica_lag": 5})
    pool: dict[str, Any] = dict(POOL)
    if name == "hosts":  # a multi-host alias: connections come through hosts.HostSet, which probes too
        pool.update(hosts=[f"{server.host}:{server.port}"])
    default = djsettings.database(server, DB, pool)
    default["OPTIONS"].update(connect_timeout=5, read_timeout=30)  # multi-host aliases need both
    settings.configure(
        USE_TZ=True, SECRET_KEY="x", INSTALLED_APPS=[],
        DATABASES={"default": default, "replica": replica},
    )
    import autopool

    autopool.install()
    django.setup()
    return server


def connection_id() -> int:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        return int(cur.fetchone()[0])


def sessions_held_at_once(n: int) -> tuple[list[int], list[str]]:
    """``n`` threads (greenlets under gevent) check connections out together and each holds its own
    until all have queried, so each sees its own session: their ``CONNECTION_ID()``s and errors."""
    from django.db import connection

    barrier = threading.Barrier(n)
    ids: list[int] = []
    errors: list[str] = []

    def work() -> None:
        try:
            barrier.wait(30)  # the checkouts race each other
            ids.append(connection_id())
            barrier.wait(30)  # all held at once: a session each
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(f"{type(exc).__name__}: {exc}")
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return ids, errors


class Parent:
    """The parent's five sessions: three idle in the pool, one held by this thread, one by another."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.problems: list[str] = []
        self.errors: list[BaseException] = []
        self.release = threading.Event()
        self.holder_ready = threading.Event()
        self.holder_ids: list[int] = []
        self.idle_ids = self._fill_pool()
        self.main_id = connection_id()  # checked out by this thread until the end
        self.holder = threading.Thread(target=self._hold, name="holder", daemon=True)
        self.holder.start()
        if not self.holder_ready.wait(30):
            raise RuntimeError("the holder thread did not check a connection out")
        self.ids = {self.main_id, *self.holder_ids, *self.idle_ids}
        assert len(self.ids) == IDLE + 2, self.ids
        self.threads_connected = 0  # measured just before the fork (run())
        from autopool import housekeeping

        self.housekeeping_stop = housekeeping._stop

    def _fill_pool(self) -> list[int]:
        """IDLE + 2 sessions opened at once, all returned: the pool holds them idle."""
        n = IDLE + 2
        ids, errors = sessions_held_at_once(n)
        if errors or len(ids) != n:
            raise RuntimeError(f"could not fill the pool: {errors!r}")
        return ids

    def _hold(self) -> None:
        from django.db import connection

        try:
            self.holder_ids.append(connection_id())
            self.holder_ready.set()
            self.release.wait()
            self.holder_ids.append(connection_id())  # the same session, after the child
            connection.close()
        except BaseException as exc:  # noqa: BLE001 - reported by check_sessions
            self.errors.append(exc)

    def check_sessions(self) -> None:
        """After the child: every session of the parent answers, the server lists them all."""
        from django.db import connection

        ids = ",".join(map(str, self.ids))
        listed = {int(r[0]) for r in self.server.execute(
            f"SELECT ID FROM information_schema.PROCESSLIST WHERE ID IN ({ids})")}
        if listed != self.ids:
            self.problems.append(f"sessions gone from the server's PROCESSLIST: {sorted(self.ids - listed)}")
        try:
            again = connection_id()
        except Exception as exc:  # noqa: BLE001 - the failure under test (2013 Lost connection)
            self.problems.append(f"main thread's connection: {type(exc).__name__}: {exc}")
        else:
            if again != self.main_id:
                self.problems.append(f"main thread's session {self.main_id} became {again}")
        self.release.set()
        self.holder.join(30)
        if self.errors:
            self.problems.append(f"holder thread's connection: {self.errors!r}")
        elif self.holder_ids[1:] != self.holder_ids[:1]:
            self.problems.append(f"holder thread's session changed: {self.holder_ids}")
        connection.close()
        seen = self._fill_pool_again()
        if seen != self.ids:
            self.problems.append(f"pooled sessions before {sorted(self.ids)}, after {sorted(seen)}")

    def _fill_pool_again(self) -> set:
        # All IDLE + 2 checked out at once: every pooled session is used.
        ids, errors = sessions_held_at_once(IDLE + 2)
        if errors:
            self.problems.append(f"pooled sessions after the child: {errors}")
        return set(ids)

    def server_settles(self) -> None:
        """The child's own sessions end with it: the server is back to the parent's sessions."""
        deadline = time.monotonic() + 30
        while self.server.status("Threads_connected") != self.threads_connected:
            if time.monotonic() > deadline:
                self.problems.append(f"Threads_connected {self.server.status('Threads_connected')}, "
                                     f"{self.threads_connected} before the fork")
                return
            time.sleep(0.05)


# -- what the child does --------------------------------------------------------------------------
def child_exit(parent: Parent) -> dict[str, Any]:
    return {}


def child_use(parent: Parent, opened: int = 1) -> dict[str, Any]:
    """The main thread's wrapper held a connection at fork time: its next query gets a new session."""
    from autopool import registry

    cid = connection_id()
    problems = []
    if cid in parent.ids:
        problems.append(f"the child got one of the parent's sessions ({cid})")
    entries = list(registry.entries("default"))
    if len(entries) != 1 or entries[0].inherited or entries[0].pool.opened() != opened:
        problems.append(f"the child's pools: {entries} (opened: {[e.pool.opened() for e in entries]})")
    # Under gevent the parent's housekeeping task, a greenlet, was copied into the child, where it
    # would keep running (threading calls it stopped): it must have been told to end.
    if gevent_patched() and not parent.housekeeping_stop.is_set():
        problems.append("the parent's housekeeping greenlet still runs in the child")
    return {"child_id": cid, "problems": problems}


def child_raise(parent: Parent) -> dict[str, Any]:
    """Uses the database, then dies of an exception; atexit collects garbage on the way out."""
    result = child_use(parent)
    atexit.register(gc.collect)
    return result


def child_atomic(parent: Parent) -> dict[str, Any]:
    """Forked inside the parent's transaction.atomic(): the child can neither use nor commit it."""
    from django.db import connection, transaction

    problems = []
    try:
        connection_id()
    except transaction.TransactionManagementError:
        pass
    else:
        problems.append("a query inside the parent's atomic block ran in the child")
    try:
        with transaction.atomic():  # a savepoint of the broken block: refused too
            pass
    except transaction.TransactionManagementError:
        pass
    except Exception as exc:  # noqa: BLE001 - reported
        problems.append(f"nested atomic: {type(exc).__name__}: {exc}")
    # What the outer block's __exit__ does in the child: a rollback on a dead connection, then close.
    parent.atomic.__exit__(None, None, None)
    if connection.in_atomic_block:
        problems.append("still in the atomic block")
    cid = connection_id()
    if cid in parent.ids:
        problems.append(f"the child got one of the parent's sessions ({cid})")
    return {"child_id": cid, "problems": problems}


def child_monitor(parent: Parent) -> dict[str, Any]:
    from autopool import routers

    problems = []
    mon = routers.monitor()
    if mon is parent.monitor:
        problems.append("routers.monitor() in the child is the parent's")
    if routers.ReplicaRouter().monitor is not mon:
        problems.append("a router made in the parent does not use the child's monitor")
    deadline = time.monotonic() + 30
    while mon.replicas[0].checked_at is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the child's housekeeping task checks it
    if mon.replicas[0].checked_at is None:
        problems.append("the child's monitor was never checked by the child's housekeeping")
    with mon._lock:
        conn = mon.replicas[0].conn
        cid = None if conn is None else _conn_id(conn)
    if cid is None or cid in parent.ids or cid == parent.monitor_id:
        problems.append(f"the child's monitor connection: session {cid}")
    return {"child_id": cid, "problems": problems}


def _no_handler_ran(problems: list[str]) -> None:
    from autopool import fork

    if fork.pid == os.getpid():
        problems.append("autopool's after-fork handler ran at fork time: the scenario tests nothing")


def child_c_request(parent: Parent) -> dict[str, Any]:
    """Forked by C's fork() (uWSGI's workers): no at-fork handler ran. The worker's first request:
    Django's request_started closes the main thread's inherited connection (CONN_MAX_AGE 0), then
    queries."""
    problems: list[str] = []
    _no_handler_ran(problems)
    result = _request(parent)
    result["problems"] = problems + result["problems"]
    return result


def _request(parent: Parent, opened: int = 1) -> dict[str, Any]:
    from django.core.signals import request_finished, request_started

    request_started.send(sender=None)
    result = child_use(parent, opened)
    request_finished.send(sender=None)
    return result


def child_c_checkout(parent: Parent) -> dict[str, Any]:
    """Forked by C's fork(): the first use is a checkout, by new threads (greenlets under gevent) at
    once, as a worker's request threads; then the main thread's wrapper, which held a connection at
    fork time, queries through a request."""

    problems: list[str] = []
    _no_handler_ran(problems)
    n = 3
    ids, errors = sessions_held_at_once(n)  # the first checkouts race to the reset
    if errors or len(set(ids)) != n or set(ids) & parent.ids:
        problems.append(f"the new threads' queries in the child: {ids} {errors}")
    result = _request(parent, opened=n)
    if result.get("child_id") in parent.ids:
        problems.append("the main thread got one of the parent's sessions")
    result["problems"] = problems + result["problems"]
    return result


def child_c_fork_then_fork(parent: Parent) -> dict[str, Any]:
    """Forked by C's fork(), then, before any checkout, forks a child of its own with os.fork() (a
    worker starting a multiprocessing child): each gets sessions of its own."""
    problems: list[str] = []
    _no_handler_ran(problems)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        in_child("use", parent, write_fd)
    os.close(write_fd)
    grandchild = read_report(read_fd, pid)
    code = reap(pid)
    problems += [f"grandchild: {p}" for p in grandchild.get("problems", [])]
    if code != 0:
        problems.append(f"grandchild exit status {code}")
    result = _request(parent)
    if result.get("child_id") == grandchild.get("child_id"):
        problems.append(f"the child and its own child shared session {result.get('child_id')}")
    result["problems"] = problems + result["problems"]
    return result


CHILDREN: dict[str, Callable[[Parent], dict[str, Any]]] = {
    "exit": child_exit, "use": child_use, "raise": child_raise, "atomic": child_atomic,
    "monitor": child_monitor, "hosts": child_use, "c_fork_request": child_c_request,
    "c_fork_checkout": child_c_checkout, "c_fork_then_fork": child_c_fork_then_fork,
}


def c_fork() -> int:
    """fork() as an embedding server calls it (uWSGI without --py-call-osafterfork): C's, which runs
    none of Python's at-fork handlers (os.register_at_fork)."""
    import ctypes

    pid = ctypes.PyDLL(None, use_errno=True).fork()  # PyDLL: the GIL stays held across the call
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork() failed")
    if pid == 0 and gevent_patched():
        import gevent

        # What a server running gevent does in a new worker: a loop of its own, not the parent's.
        gevent.reinit()
    return pid


def _conn_id(conn: Any) -> int:
    cur = conn.cursor()
    try:
        cur.execute("SELECT CONNECTION_ID()")
        return int(cur.fetchone()[0])
    finally:
        cur.close()


def in_child(name: str, parent: Parent, write_fd: int) -> None:
    """Run the child's checks, report them through the pipe, exit the normal way (never returns)."""
    try:
        report = CHILDREN[name](parent)
    except SystemExit:
        raise  # a grandchild's normal exit (c_fork_then_fork), on its way out through these frames
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        report = {"problems": [f"child raised {type(exc).__name__}: {exc}"]}
    os.write(write_fd, json.dumps(report).encode())
    os.close(write_fd)
    if name == "raise":
        raise RuntimeError("the child dies of an exception (expected by the test)")
    sys.exit(0)


def read_report(read_fd: int, pid: int) -> dict[str, Any]:
    chunks, deadline = [], time.monotonic() + CHILD_TIMEOUT
    while True:
        ready, _, _ = select.select([read_fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            os.kill(pid, 9)
            return {"problems": ["the child did not report in time"]}
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    return json.loads(b"".join(chunks) or b'{"problems": ["the child reported nothing"]}')


def reap(pid: int) -> int:
    deadline = time.monotonic() + CHILD_TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return -9
        time.sleep(0.01)


def run(name: str) -> dict[str, Any]:
    from django.db import transaction

    server = setup(name)
    parent = Parent(server)
    if name == "monitor":
        from autopool import routers

        parent.monitor = routers.monitor()
        parent.monitor.housekeep()  # its own connection is open now
        with parent.monitor._lock:
            parent.monitor_id = _conn_id(parent.monitor.replicas[0].conn)
    if name == "atomic":
        parent.atomic = transaction.atomic()
        parent.atomic.__enter__()
        with __import__("django.db").db.connection.cursor() as cur:
            cur.execute("CREATE TEMPORARY TABLE t (v INT)")
            cur.execute("INSERT INTO t VALUES (1)")
    parent.threads_connected = server.status("Threads_connected")
    if name == "multiprocessing":
        report, code = run_multiprocessing(parent)
    elif name == "siblings":
        report, code = run_siblings(parent)
    else:
        read_fd, write_fd = os.pipe()
        pid = c_fork() if name.startswith("c_fork") else os.fork()
        if pid == 0:
            os.close(read_fd)
            in_child(name, parent, write_fd)
        os.close(write_fd)
        report = read_report(read_fd, pid)
        code = reap(pid)
    problems = list(report.get("problems", []))
    expected = 1 if name == "raise" else 0
    if code != expected:
        problems.append(f"child exit status {code}, expected {expected}")
    if name == "atomic":
        with __import__("django.db").db.connection.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM t")  # the parent's transaction and session are intact
            if cur.fetchone()[0] != 1:
                problems.append("the parent's transaction lost its row")
        parent.atomic.__exit__(None, None, None)
    if name == "monitor":
        with parent.monitor._lock:
            try:
                again = _conn_id(parent.monitor.replicas[0].conn)
            except Exception as exc:  # noqa: BLE001 - the failure under test
                again = f"{type(exc).__name__}: {exc}"
        if again != parent.monitor_id:
            problems.append(f"the parent's monitor session {parent.monitor_id} became {again}")
    parent.check_sessions()
    parent.server_settles()
    return {"problems": problems + parent.problems, "child": report, "exit_status": code,
            "parent_ids": sorted(parent.ids), "gevent": gevent_patched()}


def run_siblings(parent: Parent) -> Any:
    """Two workers of a preloading server: one keeps serving while the other (``use``) exits."""
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    read_a, write_a = os.pipe()
    pid_a = os.fork()
    if pid_a == 0:
        for fd in (go_w, ready_r, read_a):
            os.close(fd)
        problems = []
        try:
            first = connection_id()
            os.write(ready_w, b"x")
            os.read(go_r, 1)  # until the other worker has exited
            again = connection_id()
            if first in parent.ids:
                problems.append(f"the staying worker got one of the parent's sessions ({first})")
            if again != first:
                problems.append(f"the staying worker's session {first} became {again}")
            report = {"child_id": first, "problems": problems}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            report = {"problems": [f"the staying worker raised {type(exc).__name__}: {exc}"]}
        os.write(write_a, json.dumps(report).encode())
        os.close(write_a)
        sys.exit(0)
    for fd in (go_r, ready_w, write_a):
        os.close(fd)
    ready, _, _ = select.select([ready_r], [], [], CHILD_TIMEOUT)
    os.close(ready_r)
    read_b, write_b = os.pipe()
    pid_b = os.fork()
    if pid_b == 0:
        os.close(read_b)
        in_child("use", parent, write_b)
    os.close(write_b)
    report = read_report(read_b, pid_b)
    code = reap(pid_b)
    os.write(go_w, b"x")
    os.close(go_w)
    staying = read_report(read_a, pid_a)
    staying_code = reap(pid_a)
    report["problems"] = report.get("problems", []) + staying.get("problems", [])
    if not ready:
        report["problems"].append("the staying worker did not connect in time")
    if staying_code != 0:
        report["problems"].append(f"the staying worker's exit status {staying_code}")
    if staying.get("child_id") == report.get("child_id"):
        report["problems"].append("both workers had the same session")
    return report, code


def _mp_child(parent_ids: list[int], conn: Any) -> None:
    cid = connection_id()
    conn.send({"child_id": cid,
               "problems": [f"the child got one of the parent's sessions ({cid})"] if cid in parent_ids else []})
    conn.close()


def run_multiprocessing(parent: Parent) -> Any:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_mp_child, args=(sorted(parent.ids), sender))
    proc.start()
    sender.close()
    if receiver.poll(CHILD_TIMEOUT):
        report = receiver.recv()
    else:
        report = {"problems": ["the multiprocessing child did not report in time"]}
    proc.join(CHILD_TIMEOUT)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    return report, proc.exitcode


if __name__ == "__main__":
    result = run(sys.argv[1])
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # the parent's own exit is not under test
