"""example_project under real ASGI servers (uvicorn, daphne) with autopool installed: async views
on the ORM's async API and sync views, pooled and capped as the database server sees it, one
command per one-query request, the pool closed when the server exits, and a client that hangs up
mid-query leaves no checked-out or broken connection behind."""
from __future__ import annotations

import json
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests import djsettings
from tests.servers import (
    BIN,
    Process,
    ServerCounters,
    SessionSampler,
    example_env,
    free_port,
    http_get,
    prepare_example_db,
    sessions,
    wait_for,
)

# The server tests run separate processes, unaffected by the pytest process's own gevent patching:
# scripts/test.sh runs them in the plain runs only.
server_process = pytest.mark.gevent_subprocess
DB = "autopool_asgi_test"
POOL_SIZE = 4
ROWS = 20


def command(name: str, port: int) -> list[str]:
    app = "example_project.asgi:application"
    if name == "uvicorn":
        pytest.importorskip("uvicorn")
        return [str(BIN / "python"), "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log", app]
    pytest.importorskip("daphne")
    return [str(BIN / "python"), "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), app]


@pytest.fixture(params=["uvicorn", "daphne"])
def asgi(request: Any, mariadb: Any, tmp_path: Any) -> Iterator[dict[str, Any]]:
    prepare_example_db(mariadb, DB, djsettings.DRIVER, rows=ROWS)
    port = free_port()
    proc = Process(command(request.param, port), tmp_path / f"{request.param}.log",
                   env=example_env(mariadb, DB, djsettings.DRIVER, pool_size=POOL_SIZE))
    try:
        proc.wait_http(port)
        yield {"name": request.param, "port": port, "proc": proc}
    finally:
        proc.stop()
        # Whatever happened, the next test's server counters must not see this test's sessions end.
        wait_for(lambda: sessions(mariadb, DB) == 0, 30, "this test's sessions gone")
        mariadb.execute(f"DROP DATABASE IF EXISTS {DB}")


def pool_stats(port: int) -> list[dict[str, Any]]:
    status, body = http_get(port, "/stats")
    assert status == 200, body
    return body["pools"]


def checked_out(port: int) -> int:
    return sum(p["checked_out"] for p in pool_stats(port))


def ok(port: int, path: str) -> Any:
    status, body = http_get(port, path)
    assert status == 200, (path, status, body)
    return body


@server_process
def test_views_pooled_capped_and_disposed_at_exit(asgi: dict[str, Any], mariadb: Any) -> None:
    port, proc = asgi["port"], asgi["proc"]
    # The ORM's async API and a sync view, served by the same process.
    assert ok(port, "/async/item/3") == {"id": 3, "name": "item-3", "value": 3}
    assert ok(port, "/async/count") == {"count": ROWS}
    assert ok(port, "/async/items?n=3") == {"names": ["item-1", "item-2", "item-3"]}
    assert ok(port, "/async/bump/5") == {"id": 5, "value": 6}
    assert ok(port, "/async/bump/5") == {"id": 5, "value": 7}
    assert ok(port, "/item/4") == {"id": 4, "name": "item-4", "value": 4}
    ids = {ok(port, path)["connection_id"] for path in ("/async/cid", "/cid") * 10}
    assert len(ids) <= POOL_SIZE, ids

    # Concurrent slow requests, async and sync views: the cap holds on the server.
    clients, failures = 24, []
    start_line = threading.Barrier(clients)
    sampler = SessionSampler(mariadb, DB)

    def client(k: int) -> None:
        try:
            start_line.wait(30)
            for path in ("/async/sleep?ms=150", "/sleep?ms=150") if k % 2 else ("/sleep?ms=150", "/async/sleep?ms=150"):
                status, body = http_get(port, path, timeout=60)
                if status != 200:
                    failures.append((path, status, body))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    peak = sampler.stop()
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert 2 <= peak <= POOL_SIZE, sampler.samples
    # After the load: nothing checked out, no session beyond the pool.
    wait_for(lambda: checked_out(port) == 0, 10, "every connection back in the pool")
    assert sessions(mariadb, DB) <= POOL_SIZE

    # One server command per one-query request, no new connection: the pool is warm (the load above
    # opened all it needs; the server may still be closing the last request when the client sends
    # the next one, so a pool with one connection would open a second here).
    counters = ServerCounters(mariadb)
    try:
        n = 20
        for i in range(n):
            ok(port, f"/async/item/{i % ROWS + 1}")
            ok(port, f"/item/{i % ROWS + 1}")
        d = counters.delta()
    finally:
        counters.close()
    assert d["Connections"] == 0, d
    assert 2 * n <= d["commands"] <= 1.05 * 2 * n, d

    # Shutdown: atexit closes the pool (sessions end with COM_QUIT, none aborted).
    counters = ServerCounters(mariadb)
    try:
        status = proc.stop(signal.SIGTERM)
        # uvicorn re-raises the SIGTERM after its graceful shutdown; daphne exits 0.
        assert status in (0, -signal.SIGTERM), (status, proc.output()[-3000:])
        wait_for(lambda: sessions(mariadb, DB) == 0, 10, "no session of the application")
        d = counters.delta()
    finally:
        counters.close()
    assert d["Aborted_clients"] == 0, (d, proc.output()[-3000:])


def hang_up_mid_query(port: int, path: str, mariadb: Any) -> None:
    """Send a request for a slow query, wait until the server runs it, then close the socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        wait_for(lambda: mariadb.execute(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s AND INFO LIKE 'SELECT SLEEP%%'",
            [DB])[0][0], 20, "the slow query running on the server")
    finally:
        sock.close()


@server_process
@pytest.mark.parametrize("view", ["/async/sleep", "/sleep"])
def test_client_hanging_up_mid_query_leaves_no_connection_behind(asgi: dict[str, Any], mariadb: Any,
                                                                 view: str) -> None:
    port = asgi["port"]
    ok(port, "/cid")  # the pool exists
    hang_up_mid_query(port, f"{view}?ms=1500", mariadb)
    # The query finishes on the server; the request's connection then goes back to the pool.
    wait_for(lambda: checked_out(port) == 0, 20, "the aborted request's connection back in the pool")
    wait_for(lambda: not mariadb.execute(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s AND INFO LIKE 'SELECT SLEEP%%'",
        [DB])[0][0], 20, "the slow query finished")
    assert sessions(mariadb, DB) <= POOL_SIZE
    # Every pooled connection still works: more requests than the pool holds, all served, on sessions
    # the server still has.
    ids = {ok(port, path)["connection_id"] for path in ("/cid", "/async/cid") * POOL_SIZE}
    live = {row[0] for row in mariadb.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s", [DB])}
    assert ids <= live, (ids, live)
    assert checked_out(port) == 0
    assert ok(port, "/async/item/2")["id"] == 2


# -- pool_mode="transaction" under uvicorn -------------------------------------------------------

CLIENTS = 4
WAIT_MS = 2000


@server_process
@pytest.mark.parametrize("pool_mode", ["request", "transaction"])
def test_transaction_mode_holds_no_connection_while_an_async_view_awaits(mariadb: Any, tmp_path: Any,
                                                                          pool_mode: str) -> None:
    """``aget()``, ``await asyncio.sleep``, ``aget()`` from several clients at once: in request mode
    each request holds its connection through the wait; in transaction mode none does, and each
    statement checks one out (the request-mode run is the control that shows the test can fail)."""
    prepare_example_db(mariadb, DB, djsettings.DRIVER, rows=ROWS)
    port = free_port()
    proc = Process(command("uvicorn", port), tmp_path / "uvicorn.log",
                   env=example_env(mariadb, DB, djsettings.DRIVER, pool_size=CLIENTS,
                                   EXAMPLE_POOL_OPTIONS=json.dumps({"pool_mode": pool_mode})))
    threads: list[threading.Thread] = []
    try:
        proc.wait_http(port)
        ok(port, "/async/item/1")  # the pool exists
        base = pool_stats(port)[0]["checkouts"]
        answers: list[tuple[int, Any]] = []
        path = f"/async/tx/query-wait-query?ms={WAIT_MS}&ids={ROWS}"
        threads = [threading.Thread(target=lambda: answers.append(http_get(port, path))) for _ in range(CLIENTS)]
        for t in threads:
            t.start()

        def between_the_queries() -> tuple[int, int] | None:
            # Every request ran its first query and none its second yet: all are in their wait.
            stats = pool_stats(port)[0]
            if stats["checkouts"] - base != CLIENTS:
                return None
            if pool_mode == "transaction" and stats["checked_out"]:
                return None  # a statement's connection on its way back
            return stats["checkouts"] - base, stats["checked_out"]

        checkouts, held = wait_for(between_the_queries, WAIT_MS / 1000, "every request inside its wait")
        assert held == (CLIENTS if pool_mode == "request" else 0), (pool_mode, held)
        for t in threads:
            t.join(30)
        assert sorted(status for status, _ in answers) == [200] * CLIENTS, answers
        total = pool_stats(port)[0]["checkouts"] - base
        assert total == (CLIENTS if pool_mode == "request" else 2 * CLIENTS), (pool_mode, total)
        assert checked_out(port) == 0
        assert sessions(mariadb, DB) <= CLIENTS
    finally:
        for t in threads:
            t.join(30)
        proc.stop()
        wait_for(lambda: sessions(mariadb, DB) == 0, 30, "this test's sessions gone")
        mariadb.execute(f"DROP DATABASE IF EXISTS {DB}")


# -- autopool.W020: persistent, unpooled MySQL connections in an ASGI project --------------------

def test_w020_warns_on_persistent_unpooled_mysql_aliases_only() -> None:
    from autopool.checks import check_asgi_databases

    mysql = "django.db.backends.mysql"
    found = check_asgi_databases({
        "default": {"ENGINE": mysql, "CONN_MAX_AGE": None},
        "reports": {"ENGINE": mysql, "CONN_MAX_AGE": 60},
        "pooled": {"ENGINE": mysql, "CONN_MAX_AGE": 0, "POOL": {"pool_size": 4}},
        "per_request": {"ENGINE": mysql},
        "pooled_but_persistent": {"ENGINE": mysql, "CONN_MAX_AGE": None, "POOL": {}},  # W002's case
        "sqlite": {"ENGINE": "django.db.backends.sqlite3", "CONN_MAX_AGE": None},
    })
    assert [(m.id, m.obj) for m in found] == [("autopool.W020", "DATABASES['default']"),
                                              ("autopool.W020", "DATABASES['reports']")]
    assert "CONN_MAX_AGE=None" in found[0].msg and "ASGI_APPLICATION" in found[0].msg
    assert "POOL" in found[0].hint


def test_w020_is_registered_and_needs_asgi_application() -> None:
    from unittest import mock

    from django.core import checks
    from django.test import override_settings

    from autopool.checks import check_asgi

    assert check_asgi in checks.registry.registry.get_checks()
    databases = {"default": {"ENGINE": "django.db.backends.mysql", "CONN_MAX_AGE": None}}
    with mock.patch("django.conf.settings.DATABASES", databases):
        with override_settings(ASGI_APPLICATION=None):
            assert check_asgi() == []
        with override_settings(ASGI_APPLICATION="example_project.asgi.application"):
            assert [m.id for m in check_asgi()] == ["autopool.W020"]
