"""autopool.contrib.prometheus with a real prometheus_client registry and real pools."""
from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable

import pytest

from tests.mariadb import Server
from tests.test_observability import DB_NAME, Pooled, obs_server, pooled, wait_for

__all__ = ["obs_server", "pooled"]  # fixtures shared with test_observability

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> tuple[str, Samples]:
    text = generate_latest(registry).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def labels(alias: str, database: str = DB_NAME, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(dict(alias=alias, database=database, **extra).items()))


def test_exporter_reports_live_pools(pooled: Callable[..., Pooled], obs_server: Server) -> None:
    from autopool import PoolTimeout
    from autopool.contrib import prometheus

    p = pooled({"obs_prom": {"pool_size": 2, "max_overflow": 1, "timeout": 0.3},
                "obs_prom_idle": {"pool_size": 4}})
    registry = CollectorRegistry()
    collector = prometheus.register(registry)
    assert isinstance(collector, prometheus.AutopoolCollector)

    held = [p.wrapper("obs_prom") for _ in range(3)]
    for w in held:
        w.ensure_connection()
    idle = p.wrapper("obs_prom_idle")
    idle.ensure_connection()
    idle.close()
    errors = []

    def waiter() -> None:
        try:
            p.handler.create_connection("obs_prom").ensure_connection()
        except PoolTimeout as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    assert wait_for(lambda: scrape(registry)[1].get(("autopool_waiting", labels("obs_prom"))) == 1)
    t.join()
    assert len(errors) == 1

    text, samples = scrape(registry)
    a = labels("obs_prom")
    assert samples[("autopool_connections_checked_out", a)] == 3
    assert samples[("autopool_connections_idle", a)] == 0
    assert samples[("autopool_connections_overflow", a)] == 1
    assert samples[("autopool_connections_open", a)] == 3
    assert samples[("autopool_waiting", a)] == 0
    assert samples[("autopool_pool_size", a)] == 2
    assert samples[("autopool_max_overflow", a)] == 1
    assert samples[("autopool_core_size", a)] == 2
    assert samples[("autopool_connections_opened_total", a)] == 3
    assert samples[("autopool_checkouts_total", a)] == 3
    assert samples[("autopool_timeouts_total", a)] == 1
    assert samples[("autopool_waits_total", a)] == 1
    assert samples[("autopool_too_many_waiters_total", a)] == 0
    assert samples[("autopool_wait_seconds_total", a)] >= 0.25
    assert samples[("autopool_wait_seconds_max", a)] >= 0.25
    b = labels("obs_prom_idle")
    assert samples[("autopool_connections_idle", b)] == 1
    assert samples[("autopool_pool_size", b)] == 4
    assert "# TYPE autopool_checkouts_total counter" in text
    assert "# TYPE autopool_connections_idle gauge" in text
    assert "# HELP autopool_timeouts_total Checkouts that gave up" in text
    assert obs_server.password not in text

    for w in held:
        w.close()
    _, samples = scrape(registry)
    assert samples[("autopool_connections_checked_out", a)] == 0
    assert samples[("autopool_connections_idle", a)] == 2
    assert samples[("autopool_connections_closed_total", a)] == 1

    # A disposed pool's series disappear; the next checkout starts a new pool.
    p.close()
    _, samples = scrape(registry)
    assert not any(dict(lbl).get("alias", "").startswith("obs_prom") for _, lbl in samples)
    prometheus.unregister(collector, registry)
    assert "autopool_" not in generate_latest(registry).decode()


def test_extra_labels_and_describe(pooled: Callable[..., Pooled]) -> None:
    from autopool.contrib.prometheus import COUNTERS, GAUGES, AutopoolCollector, register

    p = pooled({"obs_prom_worker": {}})
    w = p.wrapper("obs_prom_worker")
    w.ensure_connection()
    w.close()
    registry = CollectorRegistry()
    register(registry, extra_labels={"worker": "3"})
    _, samples = scrape(registry)
    assert samples[("autopool_connections_idle", labels("obs_prom_worker", worker="3"))] == 1
    with pytest.raises(ValueError, match="alias"):
        AutopoolCollector(extra_labels={"alias": "x"})
    # describe() lists every family without reading the pools.
    names = {f.name for f in AutopoolCollector().describe()}
    assert names == {f"autopool_{n}" for _, n, _ in GAUGES + COUNTERS}


def test_missing_prometheus_client_is_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "prometheus_client" or name.startswith("prometheus_client."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # makes the import fail
    monkeypatch.delitem(sys.modules, "autopool.contrib.prometheus", raising=False)
    with pytest.raises(ImportError, match=r"pip install prometheus_client"):
        importlib.import_module("autopool.contrib.prometheus")
    monkeypatch.undo()
    importlib.import_module("autopool.contrib.prometheus")
