"""Fleet sizing over every host of every alias: ``check-server --processes N`` and ``autopool.W010``.

Two real servers: the session's and a second, private one. A multi-host alias spanning both counts
in full on each (after a failover all its connections may be on either).
"""
from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tests.mariadb import ENV, Server
from tests.test_observability import DB_NAME, db_settings, manage, obs_server, project

__all__ = ["obs_server", "project"]

TIMEOUTS = {"connect_timeout": 2, "read_timeout": 10}


@pytest.fixture(scope="module")
def second_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with mock.patch.dict(os.environ):
        for key in ("HOST", "PORT", "USER", "PASSWORD"):
            os.environ.pop(ENV + key, None)
        server = Server.from_env_or_start(base_dir=str(tmp_path_factory.mktemp("fleet")))
    server.execute(f"CREATE DATABASE IF NOT EXISTS {DB_NAME}")
    try:
        yield server
    finally:
        server.stop()


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def databases(one: Server, two: Server, **cluster_pool: Any) -> dict[str, Any]:
    pool = dict({"pool_size": 4, "max_overflow": 6,
                 "hosts": [f"127.0.0.1:{one.port}", f"127.0.0.1:{two.port}"]}, **cluster_pool)
    return {
        "default": db_settings(one, POOL={"pool_size": 3, "max_overflow": 2}),
        "cluster": db_settings(one, POOL=pool, OPTIONS=TIMEOUTS),
        "plain": db_settings(two),
    }


def test_check_server_counts_every_host_of_a_multi_host_alias(project: Path, obs_server: Server,
                                                               second_server: Server) -> None:
    dbs = databases(obs_server, second_server)
    run = manage(project, "autopool", "check-server", "--processes", "3", databases=dbs)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    sections = {block.split()[0]: block for block in out.split("Server ")[1:]}
    assert len(sections) == 2, out
    first = next(b for a, b in sections.items() if a != f"127.0.0.1:{second_server.port}")
    second = sections[f"127.0.0.1:{second_server.port}"]
    # The first server: default (3 + 2) and the cluster alias in full (4 + 6).
    assert "needed: 3 process(es) x 15 = 45" in first
    # The second: only the cluster alias, in full.
    assert "cluster          pool_size 4 + max_overflow 6 = 10 per process" in second
    assert "needed: 3 process(es) x 10 = 30" in second
    assert out.rstrip().endswith("OK: the pools fit.")
    assert obs_server.password not in out + run.stderr


def test_check_server_names_an_unreachable_host(project: Path, obs_server: Server, second_server: Server) -> None:
    port = dead_port()
    dbs = databases(obs_server, second_server,
                    hosts=[f"127.0.0.1:{obs_server.port}", f"127.0.0.1:{port}"])
    run = manage(project, "autopool", "check-server", databases=dbs)
    assert run.returncode == 1
    errors = [line for line in run.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and errors[0].startswith(f"ERROR cluster (127.0.0.1:{port}): cannot query the server")


def test_system_check_w010_when_the_fleet_does_not_fit(project: Path, obs_server: Server,
                                                        second_server: Server) -> None:
    max_conn = int(second_server.execute("SELECT @@max_connections")[0][0])
    dbs = databases(obs_server, second_server)
    # Without --database the check does not connect: nothing to say.
    run = manage(project, "check", databases=dbs, env={"AUTOPOOL_PROCESSES": str(max_conn)})
    assert run.returncode == 0 and "W010" not in run.stdout + run.stderr, run.stdout + run.stderr
    fits = manage(project, "check", "--database", "default", databases=dbs, env={"AUTOPOOL_PROCESSES": "2"})
    assert fits.returncode == 0 and "autopool.W01" not in fits.stdout + fits.stderr, fits.stdout + fits.stderr
    processes = max_conn // 10 + 1  # the cluster alias alone overflows the second server
    run = manage(project, "check", "--database", "default", databases=dbs,
                 env={"AUTOPOOL_PROCESSES": str(processes)})
    text = run.stdout + run.stderr
    assert "autopool.W010" in text
    assert f"127.0.0.1:{second_server.port}: {processes} process(es) x 10 connections" in text
    assert f"127.0.0.1:{obs_server.port}: {processes} process(es) x 15 connections" in text
    assert "'default', 'cluster'" in text or "'cluster', 'default'" in text
    # An unreachable host is a warning of its own, naming the alias and the host.
    port = dead_port()
    dbs = databases(obs_server, second_server, hosts=[f"127.0.0.1:{obs_server.port}", f"127.0.0.1:{port}"])
    run = manage(project, "check", "--database", "default", databases=dbs)
    text = run.stdout + run.stderr
    assert "autopool.W011" in text and f"DATABASES['cluster'] (127.0.0.1:{port}): cannot query" in text


def test_settings_checks_for_clusters(obs_server: Server) -> None:
    from autopool.checks import check_databases

    dbs = {"cluster": db_settings(obs_server, POOL={"hosts": ["db1", "db2"]}),
           "replica": db_settings(obs_server, POOL={"replica_of": "nowhere"})}
    messages = check_databases(dbs, installed=True, enabled=True)
    by_id = {m.id: m for m in messages}
    assert set(by_id) == {"autopool.E010", "autopool.E011"}
    assert "'connect_timeout' and 'read_timeout'" in by_id["autopool.E010"].msg
    assert "'nowhere'" in by_id["autopool.E011"].msg
    dbs["cluster"]["OPTIONS"] = TIMEOUTS
    dbs["replica"]["POOL"]["replica_of"] = "cluster"
    assert check_databases(dbs, installed=True, enabled=True) == []
