"""fork() with pooled connections: a child's normal exit never touches the parent's sessions.

Each scenario runs in a fresh process (``tests/fork_scenarios.py``): the parent holds five pooled
sessions (three idle, one checked out by its main thread, one by a parked thread), forks, and the
child exits through the interpreter's normal shutdown, which a child of the pytest process cannot
do. Afterwards each of the parent's sessions still answers with its CONNECTION_ID and the server
still lists it. Every scenario runs plain and under gevent's monkey patching, on the driver of the
run (``AUTOPOOL_TEST_DRIVER``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

SCENARIOS = {
    "exit": "the child exits with sys.exit without using the database",
    "use": "the child's query (on the wrapper that held a connection at fork) gets a new session",
    "multiprocessing": "a multiprocessing 'fork' child runs a query and returns",
    "raise": "the child uses the database, then dies of an exception, atexit running gc.collect",
    "atomic": "forked inside atomic(): the child can neither query nor commit the parent's transaction",
    "monitor": "the child has its own replica monitor, checked by its own housekeeping",
    "siblings": "two workers: one exits normally while the other keeps its own session (prefork servers)",
    "hosts": "a multi-host alias (connections made by hosts.HostSet): the child's query gets a new session",
    "c_fork_request": "forked by C's fork(), no at-fork handler run (uWSGI): the first request's close resets",
    "c_fork_checkout": "forked by C's fork(), no at-fork handler run (uWSGI): the first checkout resets",
    "c_fork_then_fork": "forked by C's fork(), then os.fork() before any checkout: both get sessions of their own",
}


@pytest.fixture
def scenario(mariadb: Any) -> Callable[..., dict[str, Any]]:
    def run(name: str, gevent: bool) -> dict[str, Any]:
        prefix = ["-m", "gevent.monkey", "--module"] if gevent else ["-m"]
        proc = subprocess.run([sys.executable, *prefix, "tests.fork_scenarios", name],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, **mariadb.env()})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        assert lines, proc.stdout + proc.stderr
        result = json.loads(lines[-1])
        result["stderr"] = proc.stderr
        return result

    return run


@pytest.mark.parametrize("gevent", [False, True], ids=["threads", "gevent"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_parent_sessions_survive_a_child_that_exits_normally(scenario: Any, name: str, gevent: bool) -> None:
    r = scenario(name, gevent)
    assert r["problems"] == [], f"{SCENARIOS[name]}:\n" + "\n".join(r["problems"]) + "\n" + r["stderr"]
    assert r["gevent"] is gevent
    assert "after-fork step" not in r["stderr"]  # fork.py logs a step that failed
    assert r["exit_status"] == (1 if name == "raise" else 0)
    assert len(r["parent_ids"]) == 5
    if name != "exit":
        assert r["child"]["child_id"] not in r["parent_ids"]
    if name == "raise":
        assert "the child dies of an exception (expected by the test)" in r["stderr"]


def test_one_after_fork_handler_owns_the_per_process_state() -> None:
    """Only fork.py registers with os.register_at_fork: a new piece of per-process state gets its
    reset there, in order, not in a handler of its own."""
    import pathlib

    import autopool

    package = pathlib.Path(autopool.__file__).parent
    registering = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                         if "register_at_fork(" in p.read_text())
    assert registering == ["fork.py"]


def test_the_reset_runs_once_per_process(server: Any) -> None:
    """fork.after_in_child() is both the at-fork handler and what a checkout or close calls on a new
    pid: in the process whose state it already is (here, never forked), it changes nothing."""
    from django.db import connection

    from autopool import fork, registry
    from tests.conftest import connection_id

    first = connection_id()
    connection.close()
    entries = list(registry.entries("default"))
    assert fork.pid == os.getpid()
    fork.after_in_child()
    fork.after_in_child()
    assert list(registry.entries("default")) == entries
    assert not any(entry.inherited for entry in entries)
    assert connection_id() == first  # the same pooled session, its descriptor untouched
