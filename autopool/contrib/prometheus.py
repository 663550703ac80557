"""Prometheus exporter for autopool's pools (needs ``prometheus_client``).

::

    from autopool.contrib import prometheus
    prometheus.register()          # on prometheus_client.REGISTRY

A custom collector: nothing is recorded on the checkout path; each scrape reads
``autopool.stats()`` of the scraped process. Series are labelled ``alias`` and
``database`` (plus any ``extra_labels``, e.g. a worker id):

* gauges ``autopool_connections_idle``, ``autopool_connections_checked_out``,
  ``autopool_connections_overflow``, ``autopool_connections_open``,
  ``autopool_waiting``, ``autopool_pool_size``, ``autopool_max_overflow``,
  ``autopool_core_size``, ``autopool_wait_seconds_max``;
* counters ``autopool_connections_opened_total`` (``_closed``,
  ``_invalidated``, ``_recycled``, ``_retired``), ``autopool_checkouts_total``,
  ``autopool_waits_total``, ``autopool_timeouts_total``,
  ``autopool_too_many_waiters_total``, ``autopool_rollbacks_on_return_total``,
  ``autopool_session_resets_total``, ``autopool_leaks_total``,
  ``autopool_wait_seconds_total``.

Pools live per process: under gunicorn or uWSGI with several workers, expose
each worker (see docs/monitoring.rst); prometheus_client's multiprocess mode
does not run custom collectors.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

try:
    from prometheus_client import REGISTRY
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "autopool.contrib.prometheus needs the prometheus_client package: "
        "pip install prometheus_client (or pip install 'django-mysql-autopool[prometheus]')"
    ) from exc

from .. import counters
from ..counters import DESCRIPTIONS

PREFIX = "autopool"

# (stats key, metric name without prefix, help)
GAUGES: tuple[tuple[str, str, str], ...] = (
    ("idle", "connections_idle", "Idle connections in the pool."),
    ("checked_out", "connections_checked_out", "Connections checked out (in use)."),
    ("overflow", "connections_overflow", "Connections open beyond pool_size."),
    ("open", "connections_open", "Connections the pool holds open or is opening (idle + checked out)."),
    ("waiting", "waiting", "Checkouts waiting for a connection now."),
    ("pool_size", "pool_size", "Configured pool_size."),
    ("max_overflow", "max_overflow", "Configured max_overflow (-1: unlimited)."),
    ("core_size", "core_size", "Connections never retired (the elastic pool's core; else pool_size)."),
    ("wait_time_max", "wait_seconds_max", DESCRIPTIONS["wait_time_max"]),
)
COUNTERS: tuple[tuple[str, str, str], ...] = tuple((key, key, DESCRIPTIONS[key]) for key in counters.COUNTERS) + (
    ("wait_time_total", "wait_seconds", DESCRIPTIONS["wait_time_total"]),
)

LABELS = ("alias", "database")


class AutopoolCollector(Collector):
    """Yields one sample per pool and metric at each scrape."""

    def __init__(self, extra_labels: Mapping[str, str] | None = None, prefix: str = PREFIX) -> None:
        self.extra_labels: dict[str, str] = {str(k): str(v) for k, v in (extra_labels or {}).items()}
        clash = set(self.extra_labels) & set(LABELS)
        if clash:
            raise ValueError(f"extra_labels may not redefine {', '.join(sorted(clash))}")
        self.prefix = prefix

    def _stats(self) -> list[dict[str, Any]]:
        import autopool

        return autopool.stats()

    def collect(self) -> Iterator[Any]:
        rows = self._stats()
        names = list(LABELS) + list(self.extra_labels)
        extra = list(self.extra_labels.values())
        for key, name, doc in GAUGES:
            family = GaugeMetricFamily(f"{self.prefix}_{name}", doc, labels=names)
            for row in rows:
                if row.get(key) is not None:
                    family.add_metric(self._values(row) + extra, float(row[key]))
            yield family
        for key, name, doc in COUNTERS:
            # prometheus_client appends _total to a counter's samples.
            counter = CounterMetricFamily(f"{self.prefix}_{name}", doc, labels=names)
            for row in rows:
                if row.get(key) is not None:
                    counter.add_metric(self._values(row) + extra, float(row[key]))
            yield counter

    def describe(self) -> Iterator[Any]:
        # Without describe(), registering would call collect() (and autopool.stats()) at once.
        names = list(LABELS) + list(self.extra_labels)
        for _, name, doc in GAUGES:
            yield GaugeMetricFamily(f"{self.prefix}_{name}", doc, labels=names)
        for _, name, doc in COUNTERS:
            yield CounterMetricFamily(f"{self.prefix}_{name}", doc, labels=names)

    @staticmethod
    def _values(row: Mapping[str, Any]) -> list[str]:
        return [str(row["alias"]), str(row.get("database") or "")]


def register(registry: Any = REGISTRY, extra_labels: Mapping[str, str] | None = None) -> AutopoolCollector:
    """Register an :class:`AutopoolCollector` on ``registry`` and return it."""
    collector = AutopoolCollector(extra_labels)
    registry.register(collector)
    return collector


def unregister(collector: AutopoolCollector, registry: Any = REGISTRY) -> None:
    registry.unregister(collector)


__all__ = ["AutopoolCollector", "register", "unregister", "GAUGES", "COUNTERS"]
