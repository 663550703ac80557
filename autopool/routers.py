"""Read replicas: ``autopool.routers.ReplicaRouter``.

Declare each replica as a ``DATABASES`` alias whose ``POOL`` names its primary,
and add the router::

    DATABASES = {
        "default": {..., "POOL": {"pool_size": 10}},
        "replica1": {..., "POOL": {"pool_size": 10, "replica_of": "default", "max_replica_lag": 5},
                     "TEST": {"MIRROR": "default"}},
    }
    DATABASE_ROUTERS = ["autopool.routers.ReplicaRouter"]

Reads of a primary's models go to one of its healthy replicas, chosen at
random, else to the primary. A replica is healthy while its replication lag
(``Seconds_Behind_Master``) is below ``max_replica_lag``; an unknown lag
(replication stopped or broken, the replica unreachable, not a replica at all)
is unhealthy. The housekeeping task checks every replica once a second, over
a connection of its own (one per replica and process, outside the pool): no
query ever waits for a lag check.

Read-your-writes: once a request writes to a primary (anything Django routes
with ``db_for_write``: ``save()``, ``update()``, ``delete()``, ``create()``,
``select_for_update()``), its later reads of that primary's models go to the
primary too, until the request ends (``request_started``/``request_finished``
reset it). Reads inside ``transaction.atomic()`` on the primary stay on the
primary. Outside requests (Celery tasks, commands) call :func:`reset` when a
unit of work starts, and :func:`pin_primary` after writing through a raw
cursor, which the router cannot see. :func:`use_primary` forces primary reads
for a block.

Routers listed before this one win: put project routers that send models to
other databases first.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from asgiref.local import Local
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS

from . import fork
from .housekeeping import ROUND_INTERVAL

logger = logging.getLogger("autopool")

_state = Local()  # per thread, greenlet (once patched) or asyncio task: primaries written to


def _pins() -> set[str]:
    pins = getattr(_state, "pins", None)
    if pins is None:
        pins = _state.pins = set()
    return pins


def reset(**kwargs: Any) -> None:
    """Forget this request's writes: reads may use replicas again (connected to request signals)."""
    _state.pins = set()
    _state.forced = 0


def pin_primary(alias: str = DEFAULT_DB_ALIAS) -> None:
    """Send this request's later reads of ``alias``'s models to ``alias`` (after a raw write)."""
    _pins().add(alias)


@contextlib.contextmanager
def use_primary() -> Iterator[None]:
    """Every read routed by :class:`ReplicaRouter` inside the block goes to its primary."""
    _state.forced = getattr(_state, "forced", False) + 1
    try:
        yield
    finally:
        _state.forced -= 1


def replica_lag(conn: Any) -> float | None:
    """Seconds behind the primary reported by a replica's DB-API connection; None if unknown."""
    cur = conn.cursor()
    try:
        try:
            cur.execute("SHOW REPLICA STATUS")  # MariaDB >= 10.5.1, MySQL >= 8.0.22
        except Exception:  # noqa: BLE001 - older servers only know the old name
            cur.execute("SHOW SLAVE STATUS")
        row = cur.fetchone()
        if row is None:
            return None  # not a replica
        status = dict(zip([d[0] for d in cur.description], row))
        lag = status.get("Seconds_Behind_Master", status.get("Seconds_Behind_Source"))
        return None if lag is None else float(lag)
    finally:
        try:
            cur.close()
        except Exception:  # noqa: BLE001
            pass


class Replica:
    """One replica alias, its lag and its monitoring connection."""

    __slots__ = ("alias", "primary", "max_lag", "lag", "healthy", "error", "checked_at", "conn")

    def __init__(self, alias: str, primary: str, max_lag: float) -> None:
        self.alias, self.primary, self.max_lag = alias, primary, max_lag
        self.lag: float | None = None
        self.healthy = False  # until the first check says otherwise
        self.error: str | None = "not checked yet"
        self.checked_at: float | None = None
        self.conn: Any = None


def _drop_connection(replica: Replica) -> None:
    """Close the monitor's connection to ``replica``, if any; a failing close changes nothing."""
    conn, replica.conn = replica.conn, None
    if conn is not None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - the connection is gone either way
            pass


class ReplicaMonitor:
    """Checks every replica's lag; run by the housekeeping task (``housekeep``)."""

    name = "replicas"

    def __init__(self, replicas: list[Replica], clock: Any = time.monotonic) -> None:
        self.replicas = replicas
        self._clock = clock
        # primary alias -> aliases of its healthy replicas; replaced whole, read without a lock.
        self.healthy: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def _connect(self, replica: Replica) -> Any:
        from django.db import connections

        from . import gevent as gevent_support
        from .drivers import for_module

        wrapper = connections[replica.alias]
        params = wrapper.get_connection_params()
        module = wrapper.Database
        connect: Callable[[], Any] = lambda: module.connect(**params)  # noqa: E731 - the stock driver, no pool
        driver = for_module(module)
        from . import config as config_mod

        cooperative = config_mod.parse(replica.alias, wrapper.settings_dict["POOL"]).cooperative
        if gevent_support.wants_cooperative(cooperative, driver.name):
            connect = gevent_support.wrap_creator(connect, params)
        conn = fork.track(connect())  # a forked child must not close it on the parent's socket
        try:
            conn.autocommit(True)
        except Exception:  # noqa: BLE001 - a driver without it reads status fine anyway
            pass
        return conn

    def check(self, replica: Replica) -> None:
        try:
            if replica.conn is None:
                replica.conn = self._connect(replica)
            lag = replica_lag(replica.conn)
            error = None if lag is not None else "replication lag unknown (replication stopped or not a replica)"
        except Exception as exc:  # noqa: BLE001 - any failure makes the replica unusable for now
            lag, error = None, f"{type(exc).__name__}: {exc}"
            _drop_connection(replica)
        healthy = lag is not None and lag < replica.max_lag
        if healthy != replica.healthy:
            if healthy:
                logger.warning(
                    "replica %r is healthy again (lag %.0f s < max_replica_lag %g): reads of %r may use it",
                    replica.alias,
                    lag,
                    replica.max_lag,
                    replica.primary,
                )
            else:
                why = error or f"lag {lag:.0f} s >= max_replica_lag {replica.max_lag:g}"
                logger.warning("replica %r is not used for reads of %r: %s", replica.alias, replica.primary, why)
        elif not healthy and error and replica.error != error:
            logger.info("replica %r still unhealthy: %s", replica.alias, error)
        if not healthy and error is None:
            error = f"lag {lag:.0f} s >= max_replica_lag {replica.max_lag:g}"
        replica.lag, replica.error, replica.healthy = lag, error, healthy
        replica.checked_at = self._clock()

    def housekeep(self) -> float:
        with self._lock:
            for replica in self.replicas:
                self.check(replica)
            healthy: dict[str, list[str]] = {}
            for replica in self.replicas:
                if replica.healthy:
                    healthy.setdefault(replica.primary, []).append(replica.alias)
            self.healthy = {k: tuple(v) for k, v in healthy.items()}
        return ROUND_INTERVAL  # seconds until the next round

    def close(self) -> None:
        for replica in self.replicas:
            _drop_connection(replica)

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "alias": r.alias,
                "replica_of": r.primary,
                "healthy": r.healthy,
                "lag": r.lag,
                "max_replica_lag": r.max_lag,
                "error": r.error,
            }
            for r in self.replicas
        ]


_monitor: ReplicaMonitor | None = None
_monitor_lock = threading.Lock()


def _replicas_from_settings(databases: dict[str, dict[str, Any]]) -> list[Replica]:
    from . import config as config_mod

    found = []
    for alias, db in databases.items():
        setting = db.get("POOL")
        if setting is None:
            continue
        cfg = config_mod.parse(alias, setting)
        if cfg.replica_of is None:
            continue
        if cfg.replica_of not in databases:
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}]['POOL']['replica_of']: no DATABASES alias "
                f"{cfg.replica_of!r} (aliases: {', '.join(databases)})"
            )
        if (
            databases[cfg.replica_of].get("POOL") is not None
            and config_mod.parse(cfg.replica_of, databases[cfg.replica_of]["POOL"]).replica_of is not None
        ):
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}]['POOL']['replica_of']: {cfg.replica_of!r} is itself a replica; name the primary"
            )
        found.append(Replica(alias, cfg.replica_of, float(cfg.max_replica_lag)))
    return found


def monitor() -> ReplicaMonitor:
    """The process's replica monitor (created, and registered with housekeeping, on first use).

    A forked child gets its own (:func:`reset_after_fork`): the parent's stops being checked there.
    """
    global _monitor
    mon = _monitor
    if mon is not None:  # the common case, once per routed query: no lock
        return mon
    with _monitor_lock:
        if _monitor is None:
            from django.core.signals import request_finished, request_started
            from django.db import connections

            from . import housekeeping

            # connections.settings: DATABASES as Django resolved it (aliases added at run time too).
            _monitor = ReplicaMonitor(_replicas_from_settings(connections.settings))
            request_started.connect(reset, dispatch_uid="autopool-routers-reset-start")
            request_finished.connect(reset, dispatch_uid="autopool-routers-reset-finish")
            if _monitor.replicas:
                housekeeping.register(_monitor)
        return _monitor


def stop_monitor() -> None:
    """Stop checking and close the monitoring connections (tests; settings changes)."""
    global _monitor
    from . import housekeeping

    with _monitor_lock:
        mon, _monitor = _monitor, None
    if mon is not None:
        housekeeping.unregister(mon)
        mon.close()


def lock_for_fork(timeout: float) -> bool:
    """Before ``os.fork()`` (``fork.py``): hold the replica monitor's creation still, so the child copies it whole.

    False if another thread kept it ``timeout`` seconds.
    """
    return _monitor_lock.acquire(timeout=timeout)


def release_after_fork() -> None:
    """After ``os.fork()``, in the parent and in the child: let go of what :func:`lock_for_fork` took."""
    _monitor_lock.release()


def reset_after_fork() -> None:
    """In a forked child (``fork.py``, after the inherited connections point at /dev/null): forget
    the parent's monitor; the next :func:`monitor` call builds the child's, with its own connections,
    registered with the child's housekeeping."""
    global _monitor, _monitor_lock
    _monitor_lock = threading.Lock()
    _monitor = None


def status() -> list[dict[str, Any]]:
    """Each replica's alias, primary, health, lag and why it is not used."""
    return monitor().status()


class ReplicaRouter:
    """Reads to healthy replicas, writes and read-your-writes to the primary.

    Models are routed to ``default_primary`` (``"default"``) unless the hint
    instance came from another database; subclass to change it.
    """

    default_primary: str = DEFAULT_DB_ALIAS

    def __init__(self) -> None:
        self.primary_of: dict[str, str] = {r.alias: r.primary for r in monitor().replicas}

    @property
    def monitor(self) -> ReplicaMonitor:
        # Looked up each time: Django keeps its routers for the life of the process, a forked
        # child included, and the child's monitor is not the parent's.
        return monitor()

    def _primary(self, hints: dict[str, Any]) -> str:
        instance = hints.get("instance")
        db: str | None = getattr(getattr(instance, "_state", None), "db", None) if instance is not None else None
        if db is None:
            return self.default_primary
        return self.primary_of.get(db, db)

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        primary = self._primary(hints)
        replicas = self.monitor.healthy.get(primary)
        if not replicas or getattr(_state, "forced", False) or primary in _pins():
            return primary
        from django.db import connections

        if connections[primary].in_atomic_block:
            return primary
        return replicas[0] if len(replicas) == 1 else random.choice(replicas)

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        primary = self._primary(hints)
        _pins().add(primary)
        return primary

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        db1, db2 = obj1._state.db, obj2._state.db
        if db1 is None or db2 is None:
            return None
        if self.primary_of.get(db1, db1) == self.primary_of.get(db2, db2):
            return True
        return None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        # Replicas get their schema from the primary by replication.
        if db in self.primary_of:
            return False
        return None
