"""The process's pools, keyed by database alias and connection parameters.

A changed NAME/USER/HOST/PORT/OPTIONS (the test runner switching to
``test_<name>``, a ``--parallel`` worker's clone) gets a pool of its own and
the alias's stale pool is closed, so a connection never reaches another
database. After ``fork()`` the child starts with no pools: ``fork.py`` points
the inherited connections at /dev/null and calls :func:`forget_after_fork`.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sqlalchemy import event

from . import config as config_mod
from . import fork, housekeeping
from . import gevent as gevent_support
from .counters import Counters
from .drivers import Driver, for_module
from .hosts import HostSet
from .pool import QueuePool

logger = logging.getLogger("autopool")

_lock = threading.Lock()
_pools: dict[tuple[str, str], PoolEntry] = {}

_PUBLIC_PARAMS = ("host", "port", "database", "db", "user", "unix_socket")

# Called after each multi-host pool is created. patch.py registers the step that applies Django's
# error-path patch (the hosts hear of connection errors), so the registry never imports the layer
# that installs it.
_multi_host_listeners: list[Callable[[], None]] = []


def on_multi_host_pool(listener: Callable[[], None]) -> None:
    """Call ``listener()`` after each multi-host pool is created (once per listener, however often registered)."""
    if listener not in _multi_host_listeners:
        _multi_host_listeners.append(listener)


class PoolEntry:
    """One pool and what autopool keeps beside it."""

    __slots__ = (
        "alias",
        "key",
        "config",
        "pool",
        "driver",
        "params",
        "server_data",
        "inherited",
        "counters",
        "host_set",
        "__weakref__",
    )

    def __init__(
        self, alias: str, key: str, cfg: config_mod.PoolConfig, pool: Any, driver: Driver, params: dict[str, Any]
    ) -> None:
        self.alias = alias
        self.key = key
        self.config = cfg
        self.pool = pool
        self.driver = driver
        self.params = params
        # Django's per-wrapper mysql_server_data (one query per new wrapper,
        # i.e. per greenlet) is the same for every connection of this pool.
        self.server_data: dict[str, Any] | None = None
        # Set in a forked child (fork.py): the pool belongs to the parent, and a
        # connection of it still held by a wrapper is never reset, pooled or closed.
        self.inherited = False
        self.counters = pool.counters
        # A multi-host alias's hosts.HostSet (POOL["hosts"]), else None.
        self.host_set: HostSet | None = None

    def __repr__(self) -> str:
        p = self.params
        return (
            f"<PoolEntry alias={self.alias!r} {p.get('user')}@{p.get('host') or p.get('unix_socket')}"
            f":{p.get('port')}/{p.get('database')} {type(self.pool).__name__}>"
        )


def params_key(conn_params: Mapping[str, Any], pool_setting: Any) -> str:
    """A digest of everything that decides which server session a connection is."""
    items = sorted((k, repr(v)) for k, v in conn_params.items() if k != "conv")
    raw = repr((items, pool_setting)).encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


# alias -> (copy of conn_params, copy of POOL, key): Django rebuilds conn_params
# on every connect, and comparing them with the last ones is much cheaper than
# digesting them again.
_last_keys: dict[str, tuple[dict[str, Any], Any, str]] = {}


def key_for(alias: str, conn_params: Mapping[str, Any], pool_setting: Any) -> str:
    last = _last_keys.get(alias)
    if last is not None and last[0] == conn_params and last[1] == pool_setting:
        return last[2]
    key = params_key(conn_params, pool_setting)
    setting_copy = dict(pool_setting) if isinstance(pool_setting, dict) else pool_setting
    _last_keys[alias] = (dict(conn_params), setting_copy, key)
    return key


def public_params(conn_params: Mapping[str, Any]) -> dict[str, Any]:
    """Connection parameters safe to show: never the password."""
    out = {k: conn_params[k] for k in _PUBLIC_PARAMS if k in conn_params}
    if "db" in out and "database" not in out:
        out["database"] = out.pop("db")
    return out


def get(alias: str, key: str) -> PoolEntry | None:
    return _pools.get((alias, key))


def create(
    alias: str,
    key: str,
    pool_setting: Any,
    database_module: Any,
    connect: Callable[..., Any],
    conn_params: Mapping[str, Any],
) -> PoolEntry:
    """Create (once) the pool for ``alias`` with these parameters."""
    cfg = config_mod.parse(alias, pool_setting)
    hostset = None
    if cfg.hosts is not None:
        config_mod.check_hosts_options(alias, cfg, conn_params)
    with _lock:
        entry = _pools.get((alias, key))
        if entry is not None:
            return entry
        stale = [k for k in _pools if k[0] == alias]
        stale_entries = [_pools.pop(k) for k in stale]
        driver = for_module(database_module)
        if gevent_support.wants_cooperative(cfg.cooperative, driver.name):
            connect = gevent_support.wrap_creator(connect, conn_params)
        connect = fork.tracking(connect)  # a forked child must find every connection (fork.py)
        if cfg.hosts is not None:
            hostset = HostSet(alias, cfg, conn_params, connect)
            connect = hostset.create_connection
        pool = build_pool(cfg, driver, connect)
        fork.track_pool(pool)
        entry = PoolEntry(alias, key, cfg, pool, driver, public_params(conn_params))
        pool.autopool_entry = entry
        if hostset is not None:
            hostset.attach(pool)
            entry.host_set = hostset
        _pools[(alias, key)] = entry
    for old in stale_entries:
        logger.info("connection parameters of %r changed; closing its previous pool", alias)
        _close_entry(old)
    logger.info(
        "created %s pool for %r, %r (pool_size=%s, max_overflow=%s)",
        type(pool).__name__,
        alias,
        entry,
        cfg.pool_size,
        cfg.max_overflow,
    )
    housekeeping.register(pool)
    if hostset is not None:
        housekeeping.register(hostset)  # probes down hosts
        for listener in list(_multi_host_listeners):
            listener()
    return entry


def constructor_arguments(cls: type) -> set[str]:
    """The keyword arguments ``cls(...)`` accepts, following ``**kw`` up the class hierarchy
    (SQLAlchemy's ``util.get_cls_kwargs``): a subclass that passes ``**kw`` on accepts its bases'."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        names.update(
            p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"
        )
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


def build_pool(cfg: config_mod.PoolConfig, driver: Driver, connect: Callable[..., Any]) -> Any:
    """Instantiate ``cfg.pool_class`` with the options it accepts (``config.pool_arguments``)."""
    cls = cfg.pool_class
    dialect = config_mod.resolve_dialect(cfg.alias, cfg.dialect, driver)
    if dialect is None and (cfg.any_pre_ping or cfg.sa_reset_on_return):
        dialect = driver.dialect()
    accepted = constructor_arguments(cls)
    kw = {name: value for name, value in config_mod.pool_arguments(cfg).items() if name in accepted}
    if dialect is not None:
        kw["dialect"] = dialect
    pool = cls(connect, **kw)
    _count_events(pool, cfg.alias)
    return pool


def _count_events(pool: Any, alias: str) -> None:
    counters = getattr(pool, "counters", None)
    if counters is None:
        # Pools from elsewhere (e.g. NullPool) get autopool's counters too.
        counters = pool.counters = Counters()

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        counters.connections_opened += 1

    def on_close(dbapi_connection: Any, record: Any) -> None:
        counters.connections_closed += 1

    def on_invalidate(dbapi_connection: Any, record: Any, exception: Any) -> None:
        counters.connections_invalidated += 1
        # The alias, not ``pool.name``: SQLAlchemy's own pools (NullPool) have no ``name``.
        logger.info(
            "invalidated a connection of %r (%s)",
            alias,
            type(exception).__name__ if exception is not None else "closed by Django",
        )

    event.listen(pool, "connect", on_connect)
    event.listen(pool, "close", on_close)
    event.listen(pool, "invalidate", on_invalidate)


def entries(alias: str | None = None) -> Iterator[PoolEntry]:
    for (a, _), entry in list(_pools.items()):
        if alias is None or a == alias:
            yield entry


def _close_entry(entry: PoolEntry) -> None:
    housekeeping.unregister(entry.pool)
    if entry.host_set is not None:
        housekeeping.unregister(entry.host_set)
        entry.host_set.detach()
    close = getattr(entry.pool, "close", None)
    if close is not None and isinstance(entry.pool, QueuePool):
        close()
    else:
        entry.pool.dispose()
    logger.info("disposed pool of %r", entry.alias)


def dispose(alias: str | None = None) -> int:
    """Close the pools of ``alias`` (all if None); return how many were closed.

    Idle connections are closed now, checked-out ones when they are returned.
    The next checkout creates a fresh pool.
    """
    with _lock:
        keys = [k for k in _pools if alias is None or k[0] == alias]
        victims = [_pools.pop(k) for k in keys]
    for entry in victims:
        _close_entry(entry)
    return len(victims)


def lock_for_fork(timeout: float) -> bool:
    """Before ``os.fork()`` (``fork.py``): hold the pool store still, so the child copies it whole.

    False if another thread kept it ``timeout`` seconds.
    """
    return _lock.acquire(timeout=timeout)


def release_after_fork() -> None:
    """After ``os.fork()``, in the parent and in the child: let go of what :func:`lock_for_fork` took."""
    _lock.release()


def forget_after_fork() -> None:
    """In a forked child (called by ``fork.py`` once the inherited connections point at /dev/null):
    forget the parent's pools; the next checkout builds the child's own."""
    global _lock
    _lock = threading.Lock()
    for entry in _pools.values():
        entry.inherited = True
        if entry.host_set is not None:
            entry.host_set.detach()
    _pools.clear()
    _last_keys.clear()
