"""Multi-host aliases (``POOL["hosts"]``) against the test MariaDB, hosts faked with TCP proxies.

Each "host" is a ``tests/tcpproxy.py`` proxy in front of the one test server, so a host can be
cut (every connection reset), refuse new connections, or come back, in milliseconds. The real
Galera cluster tests are ``tests/test_galera.py``.
"""
from __future__ import annotations

import contextlib
import copy
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError, connections

import autopool
from autopool import hosts as hosts_mod
from autopool import patch, registry
from autopool.errors import NoHealthyHost
from tests.tcpproxy import ProxyProcess

TIMEOUTS = {"connect_timeout": 2, "read_timeout": 10}


from tests.scenario_main import wait_until  # noqa: E402


def dead_port() -> int:
    """A loopback port nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def multi_alias(alias: str, hosts: list[str], options: Any = None, **pool: Any) -> Iterator[Any]:
    entry = copy.deepcopy(connections.settings["default"])
    host, _, port = hosts[0].rpartition(":")
    entry.update(HOST=host, PORT=port, POOL=dict({"pool_size": 4, "max_overflow": 0, "timeout": 5,
                                                    "hosts": hosts, "host_down_backoff": 0.2,
                                                    "host_down_backoff_max": 0.5}, **pool))
    entry["OPTIONS"] = dict(entry.get("OPTIONS") or {}, **(TIMEOUTS if options is None else options))
    connections.settings[alias] = entry
    try:
        yield connections[alias]
    finally:
        with contextlib.suppress(Exception):
            connections[alias].close()
        with contextlib.suppress(Exception):
            del connections[alias]
        del connections.settings[alias]
        autopool.dispose(alias)


@pytest.fixture
def proxies(server: Any) -> Iterator[list[ProxyProcess]]:
    started: list[ProxyProcess] = []
    try:
        for _ in range(2):
            started.append(ProxyProcess(server.host, server.port).start())
        yield started
    finally:
        for p in started:
            p.stop()


def entry_of(alias: str) -> Any:
    [entry] = list(registry.entries(alias))
    return entry


def served_by(conn: Any) -> int:
    """Index of the host behind the connection the wrapper holds now (from the pool record)."""
    from autopool.hooks import FAIRY

    return conn.__dict__[FAIRY]._connection_record.info[hosts_mod.HOST_KEY][0]


def served_by_next(conn: Any) -> int:
    """Index of the host behind the wrapper's next connection."""
    conn.ensure_connection()
    try:
        return served_by(conn)
    finally:
        conn.close()


def one_query(conn: Any) -> int:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetchone()
        return served_by(conn)
    finally:
        conn.close()


def idle_hosts(alias: str) -> list[int]:
    idle, _ = entry_of(alias).pool.connection_records()
    # An invalidated entry stays pooled (reconnected at its next checkout): not a connection to a host.
    return sorted(rec.info[hosts_mod.HOST_KEY][0] for rec in idle if rec.dbapi_connection is not None)


# -- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, message", [
    ({"hosts": "db1:3306"}, "non-empty list"),
    ({"hosts": []}, "non-empty list"),
    ({"hosts": ["db1:port"]}, "invalid port"),
    ({"hosts": ["db1:3306", "db1:3306"]}, "duplicate host"),
    ({"hosts": ["/var/run/mysqld.sock"]}, "unix sockets"),
    ({"hosts": ["db1"], "host_policy": "random"}, "'failover', 'round_robin'"),
    ({"hosts": ["db1"], "host_down_backoff": -1}, "host_down_backoff"),
    ({"hosts": ["db1"], "host_down_backoff": 5, "host_down_backoff_max": 1}, "below host_down_backoff"),
    ({"replica_of": ""}, "replica_of"),
    ({"max_replica_lag": "soon"}, "max_replica_lag"),
])
def test_bad_cluster_options_are_named(setting: dict[str, Any], message: str) -> None:
    from autopool import config

    with pytest.raises(ImproperlyConfigured) as info:
        config.parse("main", setting)
    assert message in str(info.value) and "DATABASES['main']['POOL']" in str(info.value)


def test_hosts_are_parsed() -> None:
    from autopool import config

    cfg = config.parse("main", {"hosts": ["db1:3307", "db2", "[::1]:3308", ("db3", 3309)]})
    assert cfg.hosts == (("db1", 3307), ("db2", None), ("::1", 3308), ("db3", 3309))
    assert cfg.host_policy == "failover"


@pytest.mark.parametrize("options, missing", [({}, "'connect_timeout' and 'read_timeout'"),
                                              ({"connect_timeout": 2}, "'read_timeout'")])
def test_multi_host_alias_needs_timeouts(server: Any, options: dict[str, Any], missing: str) -> None:
    with multi_alias("mh_cfg", [f"{server.host}:{server.port}"], options=options) as conn:
        with pytest.raises(ImproperlyConfigured) as info:
            conn.ensure_connection()
    assert missing in str(info.value) and "DATABASES['mh_cfg']['OPTIONS']" in str(info.value)


# -- choosing a host -----------------------------------------------------------------------------

def test_failover_skips_a_dead_first_host(server: Any) -> None:
    dead = dead_port()
    with multi_alias("mh_dead", [f"127.0.0.1:{dead}", f"{server.host}:{server.port}"]) as conn:
        assert one_query(conn) == 1
        [first, second] = hosts_mod.status("mh_dead")
        assert not first["up"] and ("2002" in first["last_error"] or "2003" in first["last_error"])
        assert second["up"]
        assert first["port"] == dead and second["idle"] == 1


def test_round_robin_spreads_connections(server: Any, proxies: list[ProxyProcess]) -> None:
    hosts = [f"127.0.0.1:{p.port}" for p in proxies]
    with multi_alias("mh_rr", hosts, host_policy="round_robin") as conn:
        conn.ensure_connection()  # creates the pool
        conn.close()
        pool = entry_of("mh_rr").pool
        fairies = [pool.connect() for _ in range(4)]
        used = sorted(f._connection_record.info[hosts_mod.HOST_KEY][0] for f in fairies)
        for f in fairies:
            f.close()
        assert used.count(0) == 2 and used.count(1) == 2, used


def test_all_hosts_down_raises_naming_every_host_within_timeout() -> None:
    ports = [dead_port(), dead_port()]
    with multi_alias("mh_none", [f"127.0.0.1:{p}" for p in ports], timeout=1) as conn:
        start = time.monotonic()
        with pytest.raises(OperationalError) as info:
            conn.ensure_connection()
        elapsed = time.monotonic() - start
    assert isinstance(info.value, NoHealthyHost)
    message = str(info.value)
    assert "'mh_none'" in message and all(f"127.0.0.1:{p}: " in message for p in ports)
    assert "2002" in message or "2003" in message
    assert 0.9 <= elapsed < 3


# -- failure and fail-back -------------------------------------------------------------------------

def test_failover_and_failback_through_a_cut_host(server: Any, proxies: list[ProxyProcess]) -> None:
    a, b = proxies
    with multi_alias("mh_fo", [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]) as conn:
        assert one_query(conn) == 0
        # Warm: an idle connection on host 0, plus one held by this thread.
        pool = entry_of("mh_fo").pool
        conn.ensure_connection()
        extra = pool.connect()  # a second connection, returned: idle
        extra.close()
        assert served_by(conn) == 0
        assert idle_hosts("mh_fo") and set(idle_hosts("mh_fo")) == {0}

        a.set_mode("reset")  # host 0 refuses new connections ...
        a.cut()              # ... and its connections die
        with pytest.raises(OperationalError) as info:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        assert type(info.value) is OperationalError  # Django's own, as from stock Django
        conn.close()
        state = hosts_mod.status("mh_fo")
        assert not state[0]["up"] and state[1]["up"]
        assert idle_hosts("mh_fo") == []  # host 0's idle connections are gone
        assert pool.checkedout() == 0
        # The next requests are served by host 1 at once.
        assert [one_query(conn) for _ in range(3)] == [1, 1, 1]
        assert set(idle_hosts("mh_fo")) == {1}

        a.set_mode("forward")  # host 0 is back: the housekeeping probe notices, traffic moves back
        # Marked up, then host 1's idle connections closed (fail-back).
        wait_until(lambda: hosts_mod.status("mh_fo")[0]["up"] and 1 not in idle_hosts("mh_fo"), 5,
                   "host 0 up again and host 1's idle connections closed")
        assert one_query(conn) == 0


def test_a_connection_checked_out_when_its_host_fails_is_not_pooled(server: Any,
                                                                     proxies: list[ProxyProcess]) -> None:
    a, b = proxies
    with multi_alias("mh_out", [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]) as conn:
        conn.ensure_connection()
        assert served_by(conn) == 0
        hs = entry_of("mh_out").host_set
        hs.mark_down(hs.hosts[0], "test: marked down")
        # Still usable (the host was only declared down), but it must not go back to the pool.
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.close()
        pool = entry_of("mh_out").pool
        assert pool.checkedout() == 0 and idle_hosts("mh_out") == []  # its entry reconnects at next checkout
        assert served_by_next(conn) == 1


def test_a_single_killed_connection_does_not_fail_a_healthy_host_over(server: Any,
                                                                      proxies: list[ProxyProcess]) -> None:
    a, b = proxies
    with multi_alias("mh_kill", [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            cid = cur.fetchone()[0]
        server.execute(f"KILL {int(cid)}")
        with pytest.raises(OperationalError):
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        conn.close()
        assert all(h["up"] for h in hosts_mod.status("mh_kill"))
        assert one_query(conn) == 0


def test_error_hook_exists_only_with_multi_host_pools(server: Any) -> None:
    from django.db.utils import DatabaseErrorWrapper

    autopool.dispose()
    patch.uninstall()
    original = DatabaseErrorWrapper.__dict__["__exit__"]
    patch.install()
    try:
        connections["default"].ensure_connection()
        connections["default"].close()
        assert DatabaseErrorWrapper.__dict__["__exit__"] is original  # single host: untouched
        with multi_alias("mh_hook", [f"{server.host}:{server.port}"]) as conn:
            assert one_query(conn) == 0
            assert DatabaseErrorWrapper.__dict__["__exit__"] is not original
            patch.uninstall()
            assert DatabaseErrorWrapper.__dict__["__exit__"] is original
            patch.install()
    finally:
        patch.install()
    assert DatabaseErrorWrapper.__dict__["__exit__"] is original
