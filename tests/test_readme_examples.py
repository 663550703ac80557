"""Every Python and settings example in README.rst and docs/*.rst runs, here, against the test server.

Each runs in a fresh process (``tests/readme_examples.py``) exactly as written, except
that a settings example's server addresses point at the test server.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests import readme_examples
from tests.readme_examples import MARKERS, README, blocks, python_examples

TEXT = README.read_text(encoding="utf-8")


def test_every_python_example_is_marked_and_named():
    for kind, line, source in blocks(TEXT):
        if kind == "python":
            continue
        try:
            compile(source, "README", "exec")
        except SyntaxError:
            continue  # shell sessions, program output, formulas
        pytest.fail(f"README.rst line {line}: a {kind} block that is Python; "
                    f"make it '.. code-block:: python' so that it is run")
    # The rest of MARKERS are docs/ pages' examples: tests/test_doc_examples.py checks that all are found.
    assert set(python_examples(TEXT)) <= set(MARKERS)


@pytest.fixture(scope="module")
def run(mariadb):
    mariadb.execute(f"DROP DATABASE IF EXISTS {readme_examples.DB}")

    def run(name: str, **params: Any) -> dict[str, Any]:
        env = dict(os.environ, **mariadb.env())
        proc = subprocess.run([sys.executable, "-m", "tests.readme_examples", name, json.dumps(params)],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr[-4000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["_stderr"] = proc.stderr
        return result

    yield run
    mariadb.execute(f"DROP DATABASE IF EXISTS {readme_examples.DB}")


def test_quickstart(run):
    r = run("quickstart")
    assert not r["installed_before"] and r["installed"]
    pool = r["aliases"]["default"]
    assert (pool["pool_size"], pool["max_overflow"], pool["timeout"], pool["recycle"]) == (5, 10, 30, 3600)
    assert pool["checkouts"] == 1 and pool["idle"] == 1 and pool["checked_out"] == 0
    assert r["autopool_app"] and r["checks"] == []


def test_logging(run):
    r = run("logging")
    assert "created QueuePool pool for 'default'" in r["_stderr"]
    assert r["aliases"]["default"]["checkouts"] == 1


def test_prometheus(run):
    r = run("prometheus")
    assert 'autopool_pool_size{alias="default",database="autopool_readme"} 3.0' in r["global"]
    assert 'autopool_checkouts_total{alias="default",database="autopool_readme",service="shop"} 1.0' in r["mine"]


def test_gunicorn_shutdown_hooks(run):
    r = run("gunicorn_shutdown")
    # (idle pooled connections, server sessions on the example's database)
    assert r["before"] == [1, 1] and r["after_worker_exit"] == [0, 0]
    assert r["before_pre_fork"] == [1, 1] and r["after_pre_fork"] == [0, 0]


# The uWSGI and Celery recipes: run in a real server and worker by tests/test_uwsgi.py and
# tests/test_celery.py.


def test_multi_host(run, mariadb):
    r = run("multi_host")
    # The three hosts (the test server first, then two where nothing listens): served by the first.
    first, *others = r["hosts_status"]
    assert first == [mariadb.port, True, 1, 0] and len(others) == 2
    assert all(idle == checked_out == 0 for _, _, idle, checked_out in others)
    pool = r["aliases"]["default"]
    assert (pool["pool_size"], pool["max_overflow"], pool["timeout"]) == (10, 10, 10)
    assert r["served_by_port"] == mariadb.port  # the first host of the list


def test_replicas(run):
    r = run("replicas")
    assert set(r["aliases"]) == {"default", "replica1"}
    assert r["aliases"]["replica1"]["pool_size"] == 10
    # The test server is no replica: its lag is unknown, so reads stay on the primary.
    assert r["read"] == r["write"] == "default"
    (status,) = r["status"]
    assert status["alias"] == "replica1" and not status["healthy"] and status["max_replica_lag"] == 5


def test_migration_from_the_seed(run):
    r = run("migrate", library="seed")
    assert r["before"]["default"]["ENGINE"] == "django_db_conn_pool.mysqlalchemy"
    assert r["converted_equals_after"]
    pool = r["aliases"]["default"]
    assert (pool["pool_size"], pool["max_overflow"], pool["recycle"]) == (30, 0, 3600)
    assert r["pool_class"] == "autopool.pool.DjangoQueuePool" and r["core_size"] == 5


def test_migration_from_django_db_connection_pool(run):
    r = run("migrate", library="dbcp")
    old = r["before"]["default"]
    assert old["ENGINE"] == "dj_db_conn_pool.backends.mysql"
    assert r["converted_equals_after"]
    pool = r["aliases"]["default"]
    assert (pool["pool_size"], pool["max_overflow"], pool["recycle"], pool["timeout"]) == (
        old["POOL_OPTIONS"]["POOL_SIZE"], old["POOL_OPTIONS"]["MAX_OVERFLOW"], old["POOL_OPTIONS"]["RECYCLE"],
        old["POOL_OPTIONS"]["TIMEOUT"])
    assert r["pool_class"] == "autopool.pool.QueuePool"


def test_transaction_mode(run):
    r = run("transaction_mode")
    # Outside the pin a statement gives its connection back at once.
    assert r["parked"] is True and r["checked_out_between_statements"] == 0
    sqls = [s for s, _ in r["statements"]]
    assert sqls == ["SELECT GET_LOCK('nightly-report', 0)", "SELECT CONNECTION_ID()",
                    "SELECT RELEASE_LOCK('nightly-report')"]
    # GET_LOCK granted and released on the same session: the pin held one connection.
    assert r["statements"][0][1] == [1] and r["statements"][2][1] == [1]
    assert r["lock_free_after"] == 1 and r["checked_out_after"] == 0
