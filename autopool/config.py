"""Parse and validate ``DATABASES[alias]["POOL"]``.

Every option is declared once in :data:`OPTIONS` (name, default, meaning);
the README's option table is checked against it. A bad value raises
``ImproperlyConfigured`` naming the alias, the key and what is valid, so a
typo never surfaces as a traceback from deep inside SQLAlchemy.
"""

from __future__ import annotations

import difflib
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from sqlalchemy.pool import Pool
from sqlalchemy.pool import QueuePool as SAQueuePool

from .dynamic import Dynamic, Number, evaluate
from .pool import DjangoQueuePool, QueuePool
from .presets import PRESETS

DEFAULT_POOL_CLASS = "autopool.pool.QueuePool"
_POOL_CLASS_ALIASES = {
    # The seed's class names and SQLAlchemy's QueuePool map onto autopool's
    # fair implementations: same options, plus bounded, first-come waits.
    "QueuePool": "autopool.pool.QueuePool",
    "sqlalchemy.pool.QueuePool": "autopool.pool.QueuePool",
    "sqlalchemy.pool.impl.QueuePool": "autopool.pool.QueuePool",
    "DjangoQueuePool": "autopool.pool.DjangoQueuePool",
    "django_db_conn_pool.mysqlalchemy.pool.DjangoQueuePool": "autopool.pool.DjangoQueuePool",
}
RESET_CHOICES = ("rollback", None, True, False)
# Pool classes that cannot serve Django: why, by the class's dotted name (subclasses too).
_REFUSED_POOL_CLASSES = {
    "sqlalchemy.pool.impl.StaticPool": "hands its one connection to every checkout: two threads (or greenlets) "
    "would run their queries and transactions on the same connection",
    "sqlalchemy.pool.impl.AssertionPool": "hands out one connection and raises AssertionError on a second "
    "concurrent checkout: a second thread's request fails",
    "sqlalchemy.pool.impl.SingletonThreadPool": "hands the same connection to every checkout of a thread (a "
    "greenlet under gevent), so two connection objects of one thread "
    "share it, and it closes the connections of other threads once "
    "more than pool_size threads used it, while they may be in use",
    "sqlalchemy.pool.impl.AsyncAdaptedQueuePool": "is an asyncio pool: Django's MySQL backend is synchronous",
    "sqlalchemy.pool.impl.FallbackAsyncAdaptedQueuePool": "is an asyncio pool: Django's MySQL backend is synchronous",
}
POOL_CLASS_CHOICES = (
    "autopool.pool.QueuePool",
    "autopool.pool.DjangoQueuePool",
    "sqlalchemy.pool.QueuePool",
    "sqlalchemy.pool.NullPool",
)
# Dialect names accepted for ``dialect`` (as in an SQLAlchemy URL); the driver part must be Django's.
DIALECT_NAMES = ("mysql", "mariadb")
DIALECT_DRIVERS = {"mysqldb": "mysqlclient", "pymysql": "pymysql"}
COOPERATIVE_CHOICES = ("auto", True, False)
POOL_MODES = ("request", "transaction")
SESSION_STATE_GUARDS = ("warn", "error", None)


@dataclass(frozen=True)
class Option:
    """One ``POOL`` key: its default (the only place it is written), its documentation
    (docs/options.rst is generated from it: ``python -m autopool.doc --write``), and the pool
    constructor argument it becomes, if any (``pool_arguments()``)."""

    name: str
    default: Any
    doc: str
    argument: str | None = None


OPTIONS: tuple[Option, ...] = (
    Option("preset", None, "Name of a preset to start from: slow_and_safe, fast_and_sane or fast_and_wild."),
    Option(
        "django_pool_class",
        DEFAULT_POOL_CLASS,
        "Pool class or dotted path. SQLAlchemy's QueuePool and the seed's DjangoQueuePool map to "
        "autopool's fair implementations.",
    ),
    Option(
        "django_pre_ping",
        False,
        "Ping each idle connection before handing it out; a dead one is replaced transparently. "
        "Same mechanism as pre_ping (one round trip per checkout).",
    ),
    Option(
        "django_reset_on_return",
        True,
        "Roll back on return only when a transaction may be open (tracked from Django and the "
        "driver's server status), so a clean connection costs no round trip.",
    ),
    Option(
        "django_core_pool_size",
        None,
        "DjangoQueuePool: connections never retired (default: pool_size). Number or callable.",
        argument="core_pool_size",
    ),
    Option(
        "django_unload_timeout",
        None,
        "DjangoQueuePool: once core connections are checked out, wait up to this many seconds for "
        "one to come back before opening another (None: open at once). Number or callable.",
        argument="unload_timeout",
    ),
    Option(
        "django_retire_interval",
        5,
        "DjangoQueuePool: seconds between retirement rounds. Number or callable.",
        argument="retire_interval",
    ),
    Option(
        "django_retire_quantity",
        1,
        "DjangoQueuePool: idle connections above core closed per round, oldest idle first. Number or callable.",
        argument="retire_quantity",
    ),
    Option("pool_size", 5, "Connections kept open in the pool.", argument="pool_size"),
    Option(
        "max_overflow",
        10,
        "Extra connections opened under load and closed on return; -1 for no limit.",
        argument="max_overflow",
    ),
    Option(
        "timeout",
        30,
        "Seconds a checkout waits for a connection before raising autopool.PoolTimeout.",
        argument="timeout",
    ),
    Option(
        "recycle",
        3600,
        "Replace connections older than this many seconds at checkout (-1: never). Keep it below "
        "the server's wait_timeout.",
        argument="recycle",
    ),
    Option(
        "dialect",
        None,
        "SQLAlchemy dialect used for pings and resets: None (the MySQL dialect of the driver in use), "
        "a name as in an SQLAlchemy URL ('mysql', 'mariadb', 'mysql+mysqldb', 'mysql+pymysql', "
        "'mariadb+mysqldb', 'mariadb+pymysql'; the driver part must be the one Django uses), or a "
        "synchronous sqlalchemy.engine.interfaces.Dialect instance.",
    ),
    Option("pre_ping", False, "SQLAlchemy's pre-ping on checkout (one round trip per checkout).", argument="pre_ping"),
    Option(
        "use_threadlocal",
        False,
        "Removed from SQLAlchemy 1.4; emulated: a thread (or greenlet) gets back the connection it "
        "returned last when that one is idle. Two checkouts never share a connection.",
        argument="use_threadlocal",
    ),
    Option(
        "reset_on_return",
        None,
        "SQLAlchemy's unconditional reset on every return: 'rollback' (or True), or None/False "
        "(autopool's tracked rollback applies instead). 'commit' is refused: it would commit the "
        "work of requests that Django rolls back.",
        argument="reset_on_return",
    ),
    Option(
        "use_lifo",
        False,
        "Hand out the most recently returned connection first (lets idle ones age out).",
        argument="use_lifo",
    ),
    Option("echo", False, "SQLAlchemy pool logging: True, False or 'debug'.", argument="echo"),
    Option(
        "max_waiting",
        None,
        "When the pool is exhausted and this many requests already wait, fail at once with "
        "autopool.TooManyWaiters (None: no limit).",
        argument="max_waiting",
    ),
    Option(
        "cooperative",
        "auto",
        "mysqlclient under gevent: wait for query results cooperatively ('auto': when gevent has "
        "patched socket; True; False).",
    ),
    Option(
        "leak_detection_threshold",
        None,
        "Seconds; log once, with the checkout stack, a connection held longer than this.",
        argument="leak_detection_threshold",
    ),
    Option(
        "reset_session",
        False,
        "Reset the server session on return (COM_RESET_CONNECTION): user variables, temporary "
        "tables, SET SESSION changes, table and named locks. Costs the reset plus re-applying the "
        "connection's character set (and OPTIONS sql_mode/init_command) on return, and Django's "
        "session set-up on the next checkout.",
    ),
    Option(
        "hosts",
        None,
        "Several servers for this alias (a Galera cluster), as 'host:port' strings (port defaults to "
        "PORT, else 3306); one pool spans them and its caps apply to the sum. Needs connect_timeout "
        "and read_timeout in OPTIONS. See 'Clusters and replicas' (docs/clusters.rst).",
    ),
    Option(
        "host_policy",
        "failover",
        "With hosts: 'failover' (new connections go to the first healthy host in list order, and "
        "back once an earlier host is healthy again) or 'round_robin' (spread over healthy hosts).",
    ),
    Option(
        "host_down_backoff",
        1.0,
        "With hosts: seconds a failed host is avoided before it is probed again; doubles after each "
        "failed probe, up to host_down_backoff_max.",
    ),
    Option("host_down_backoff_max", 10.0, "With hosts: the longest back-off, in seconds."),
    Option(
        "replica_of",
        None,
        "Alias of the primary this alias replicates: autopool.routers.ReplicaRouter may send that "
        "primary's reads here.",
    ),
    Option(
        "max_replica_lag",
        5.0,
        "With replica_of: reads use this replica only while its replication lag, checked every "
        "second by the housekeeping task, is below this many seconds (unknown lag: not used).",
    ),
    Option(
        "pool_mode",
        "request",
        "'request': a request holds its connection from its first query until Django closes it. "
        "'transaction': outside atomic() and with autocommit on, the connection goes back to the "
        "pool after each statement (session state does not survive between statements; see "
        "autopool.pinned()).",
    ),
    Option(
        "session_state_guard",
        "warn",
        "pool_mode='transaction': a statement that sets session state (SET, USE, CREATE TEMPORARY, "
        "GET_LOCK, LOCK TABLES) outside a transaction or pinned() is logged ('warn'), refused "
        "('error', autopool.SessionStateError) or let through (None).",
    ),
)
OPTION_NAMES = tuple(o.name for o in OPTIONS)
_DEFAULTS = {o.name: o.default for o in OPTIONS}
_ELASTIC = ("django_core_pool_size", "django_unload_timeout", "django_retire_interval", "django_retire_quantity")


@dataclass(frozen=True)
class PoolConfig:
    """A validated ``POOL`` setting; field names are the option names.

    No defaults here: :func:`parse` fills every field from ``OPTIONS``, where each default is
    written once (the check below the class keeps the two lists of names equal).
    """

    alias: str
    pool_class: type
    django_pre_ping: bool
    django_reset_on_return: bool
    django_core_pool_size: Dynamic | None
    django_unload_timeout: Dynamic | None
    django_retire_interval: Dynamic
    django_retire_quantity: Dynamic
    pool_size: int
    max_overflow: int
    timeout: float
    recycle: float
    dialect: Any
    pre_ping: bool
    use_threadlocal: bool
    reset_on_return: Any
    use_lifo: bool
    echo: Any
    max_waiting: int | None
    cooperative: Any
    leak_detection_threshold: float | None
    reset_session: bool
    preset: str | None
    # ((host, port or None), ...) once parsed; None: the alias's HOST/PORT only.
    hosts: tuple[tuple[str, int | None], ...] | None
    host_policy: str
    host_down_backoff: float
    host_down_backoff_max: float
    replica_of: str | None
    max_replica_lag: float
    pool_mode: str
    session_state_guard: str | None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def sa_reset_on_return(self) -> str | None:
        """The value handed to SQLAlchemy's ``reset_on_return``."""
        if self.reset_on_return in ("rollback", True):
            return "rollback"
        if self.reset_on_return == "commit":
            return "commit"
        return None

    @property
    def any_pre_ping(self) -> bool:
        return self.pre_ping or self.django_pre_ping


# Every option but django_pool_class (parsed into pool_class) is a PoolConfig field, and nothing else is.
assert {f.name for f in fields(PoolConfig)} - {"alias", "pool_class", "raw"} == set(OPTION_NAMES) - {
    "django_pool_class"
}, "PoolConfig's fields and OPTIONS differ"


def pool_arguments(cfg: PoolConfig) -> dict[str, Any]:
    """The pool constructor's keyword arguments, named by ``OPTIONS``' ``argument`` column.

    The caller keeps those its class accepts (``registry.build_pool``). Three options reach
    SQLAlchemy in its own form, and the pool is named after the alias. A callable elastic option
    is validated each time the pool calls it: a bad value is an ImproperlyConfigured naming the
    alias and the key.
    """
    arguments: dict[str, Any] = {}
    for option in OPTIONS:
        if option.argument is not None:
            value = getattr(cfg, option.name)
            if option.name in _ELASTIC and callable(value):
                value = checked(cfg.alias, option.name, value)
            arguments[option.argument] = value
    arguments.update(
        echo=cfg.echo or None,
        reset_on_return=cfg.sa_reset_on_return,
        pre_ping=cfg.any_pre_ping,
        logging_name=cfg.alias,
        name=cfg.alias,
    )
    return arguments


def _fail(alias: str, key: str | None, message: str) -> ImproperlyConfigured:
    where = f"DATABASES[{alias!r}]['POOL']" + (f"[{key!r}]" if key else "")
    return ImproperlyConfigured(f"{where}: {message}")


def resolve(alias: str, setting: Any) -> dict[str, Any]:
    """Return the effective option dict: defaults, then the preset, then overrides."""
    if isinstance(setting, str):
        setting = {"preset": setting}
    if not isinstance(setting, Mapping):
        raise _fail(
            alias,
            None,
            f"expected a dict of options or a preset name ({', '.join(sorted(PRESETS))}), got {type(setting).__name__}",
        )
    unknown = [k for k in setting if k not in _DEFAULTS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), OPTION_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _fail(alias, str(key), f"unknown option{hint}; valid options are: {', '.join(OPTION_NAMES)}")
    options = dict(_DEFAULTS)
    preset = setting.get("preset")
    if preset is not None:
        if not isinstance(preset, str) or preset.lower() not in PRESETS:
            raise _fail(alias, "preset", f"unknown preset {preset!r}; valid presets are: {', '.join(sorted(PRESETS))}")
        options.update(PRESETS[preset.lower()])
    options.update(setting)
    return options


def _pool_class(alias: str, value: Any) -> type:
    if value is SAQueuePool:
        return QueuePool
    given = value
    if isinstance(value, str):
        path = _POOL_CLASS_ALIASES.get(value, value)
        try:
            value = import_string(path)
        except ImportError as exc:
            raise _fail(
                alias,
                "django_pool_class",
                f"cannot import {path!r} ({exc}); use a Pool "
                "subclass or a dotted path such as 'autopool.pool.QueuePool' or "
                "'autopool.pool.DjangoQueuePool'",
            ) from None
        if value is SAQueuePool:
            return QueuePool
    if not (isinstance(value, type) and issubclass(value, Pool)):
        raise _fail(
            alias,
            "django_pool_class",
            f"expected a sqlalchemy.pool.Pool subclass or its dotted "
            f"path, got {value!r}; valid choices: {', '.join(repr(c) for c in POOL_CLASS_CHOICES)}",
        )
    for klass in value.__mro__:
        why = _REFUSED_POOL_CLASSES.get(f"{klass.__module__}.{klass.__qualname__}")
        if why is None and getattr(klass, "_is_asyncio", False) is True:
            why = "is an asyncio pool: Django's MySQL backend is synchronous"
        if why is not None:
            name = given if isinstance(given, str) else f"{value.__module__}.{value.__qualname__}"
            raise _fail(
                alias,
                "django_pool_class",
                f"{name} cannot pool Django's connections: it {why}. "
                f"Valid choices: {', '.join(repr(c) for c in POOL_CLASS_CHOICES)}, or a Pool "
                "subclass that gives each checkout its own connection",
            )
    return value


def _check_number(
    alias: str,
    key: str,
    value: Any,
    *,
    minimum: Number,
    integer: bool = False,
    allow_none: bool = False,
    allow_callable: bool = False,
    extra: str = "",
) -> None:
    if value is None and allow_none:
        return
    if allow_callable and callable(value):
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and integer:
        ok = isinstance(value, numbers.Integral)
    if ok:
        ok = value >= minimum
    if not ok:
        kind = "an integer" if integer else "a number"
        what = f"{kind} >= {minimum}" + (extra and f" {extra}") + (" or None" if allow_none else "")
        if allow_callable:
            what += " (or a zero-argument callable returning one)"
        raise _fail(alias, key, f"expected {what}, got {value!r}")


def _check_choice(alias: str, key: str, value: Any, choices: tuple[Any, ...]) -> None:
    if not any(value is c or (isinstance(c, str) and value == c) for c in choices):
        raise _fail(alias, key, f"invalid value {value!r}; valid choices are: {', '.join(repr(c) for c in choices)}")


def parse(alias: str, setting: Any) -> PoolConfig:
    """Validate a ``POOL`` setting and return its :class:`PoolConfig`."""
    o = resolve(alias, setting)
    pool_class = _pool_class(alias, o["django_pool_class"])
    for key in (
        "django_pre_ping",
        "django_reset_on_return",
        "pre_ping",
        "use_threadlocal",
        "use_lifo",
        "reset_session",
    ):
        _check_choice(alias, key, o[key], (True, False))
    _check_number(alias, "pool_size", o["pool_size"], minimum=1, integer=True)
    _check_number(alias, "max_overflow", o["max_overflow"], minimum=-1, integer=True, extra="(-1: no limit)")
    _check_number(alias, "timeout", o["timeout"], minimum=0)
    if o["recycle"] != -1:
        _check_number(alias, "recycle", o["recycle"], minimum=0, extra="(or -1: never)")
    _check_number(alias, "max_waiting", o["max_waiting"], minimum=0, integer=True, allow_none=True)
    _check_number(alias, "leak_detection_threshold", o["leak_detection_threshold"], minimum=0, allow_none=True)
    if o["reset_on_return"] == "commit":
        raise _fail(
            alias,
            "reset_on_return",
            "'commit' is refused: Django rolls back the work of a request "
            "that fails or ends inside a transaction (an exception in a view, set_autocommit(False) "
            "without commit, a raw START TRANSACTION), and a pool that commits on return would "
            "commit that work instead. Use 'rollback' (or True), or None/False to let autopool roll "
            "back only when a transaction may be open; valid choices: "
            f"{', '.join(repr(c) for c in RESET_CHOICES)}",
        )
    _check_choice(alias, "reset_on_return", o["reset_on_return"], RESET_CHOICES)
    _check_dialect(alias, o["dialect"])
    _check_choice(alias, "cooperative", o["cooperative"], COOPERATIVE_CHOICES)
    _check_choice(alias, "echo", o["echo"], (True, False, None, "debug"))
    _check_number(
        alias,
        "django_core_pool_size",
        o["django_core_pool_size"],
        minimum=0,
        integer=True,
        allow_none=True,
        allow_callable=True,
    )
    _check_number(
        alias, "django_unload_timeout", o["django_unload_timeout"], minimum=0, allow_none=True, allow_callable=True
    )
    _check_number(
        alias,
        "django_retire_interval",
        o["django_retire_interval"],
        minimum=0,
        allow_callable=True,
        extra="(exclusive)",
    )
    if not callable(o["django_retire_interval"]) and o["django_retire_interval"] == 0:
        raise _fail(alias, "django_retire_interval", "expected a number > 0, got 0")
    _check_number(
        alias, "django_retire_quantity", o["django_retire_quantity"], minimum=0, integer=True, allow_callable=True
    )
    for key in _ELASTIC:
        if callable(o[key]):
            evaluate_option(alias, key, o[key])  # once now, so ``manage.py check`` shows a bad result
    if not issubclass(pool_class, DjangoQueuePool):
        explicit = [k for k in _ELASTIC if k in _explicit_keys(setting)]
        if explicit:
            raise _fail(
                alias,
                explicit[0],
                f"only applies to autopool.pool.DjangoQueuePool, but "
                f"django_pool_class is {pool_class.__module__}.{pool_class.__qualname__}; "
                f"set 'django_pool_class': 'autopool.pool.DjangoQueuePool' or remove it",
            )
    core = o["django_core_pool_size"]
    if isinstance(core, int) and core > o["pool_size"] and o["max_overflow"] == 0:
        raise _fail(alias, "django_core_pool_size", f"{core} exceeds pool_size {o['pool_size']} with max_overflow=0")
    _check_cluster_options(alias, o)
    _check_choice(alias, "pool_mode", o["pool_mode"], POOL_MODES)
    _check_choice(alias, "session_state_guard", o["session_state_guard"], SESSION_STATE_GUARDS)
    o.pop("django_pool_class")
    return PoolConfig(alias=alias, pool_class=pool_class, raw=dict(o), **o)


HOST_POLICIES = ("failover", "round_robin")
# What a multi-host alias needs in DATABASES[alias]["OPTIONS"]: without them a dead or frozen host
# holds a request for the kernel's TCP timeouts (minutes) instead of being given up.
HOSTS_REQUIRED_OPTIONS = ("connect_timeout", "read_timeout")


def parse_host(alias: str, value: Any) -> tuple[str, int | None]:
    """``"db1:3306"``, ``"db1"``, ``"[::1]:3306"`` or ``("db1", 3306)`` -> ``("db1", 3306)``."""
    host: Any
    port: Any = None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        host, port = value
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else (rest or None)
        elif text.count(":") == 1:
            host, port = text.split(":")
        else:
            host = text  # a name, an IPv4 address or a bare IPv6 address
    else:
        raise _fail(alias, "hosts", f"expected 'host:port' strings or (host, port) pairs, got {value!r}")
    if not isinstance(host, str) or not host.strip() or host.startswith("/"):
        raise _fail(
            alias,
            "hosts",
            f"invalid host in {value!r}: expected a host name or address (unix sockets cannot be used with hosts)",
        )
    if port is not None and port != "":
        try:
            port = int(port)
        except (TypeError, ValueError):
            port = -1
        if isinstance(value, (tuple, list)) and isinstance(value[1], bool) or not 0 < port < 65536:
            raise _fail(alias, "hosts", f"invalid port in {value!r}: expected 1-65535")
    else:
        port = None
    return host.strip(), port


def _check_cluster_options(alias: str, o: dict[str, Any]) -> None:
    hosts = o["hosts"]
    if hosts is not None:
        if isinstance(hosts, (str, bytes)) or not isinstance(hosts, (list, tuple)) or not hosts:
            raise _fail(alias, "hosts", f"expected a non-empty list of 'host:port' strings, got {hosts!r}")
        parsed = tuple(parse_host(alias, h) for h in hosts)
        if len(set(parsed)) != len(parsed):
            raise _fail(alias, "hosts", f"duplicate host in {list(hosts)!r}")
        o["hosts"] = parsed
    _check_choice(alias, "host_policy", o["host_policy"], HOST_POLICIES)
    _check_number(alias, "host_down_backoff", o["host_down_backoff"], minimum=0)
    _check_number(alias, "host_down_backoff_max", o["host_down_backoff_max"], minimum=0)
    if o["host_down_backoff_max"] < o["host_down_backoff"]:
        raise _fail(
            alias,
            "host_down_backoff_max",
            f"{o['host_down_backoff_max']!r} is below host_down_backoff={o['host_down_backoff']!r}",
        )
    replica_of = o["replica_of"]
    if replica_of is not None and (not isinstance(replica_of, str) or not replica_of or replica_of == alias):
        raise _fail(alias, "replica_of", f"expected the alias of another DATABASES entry, got {replica_of!r}")
    _check_number(alias, "max_replica_lag", o["max_replica_lag"], minimum=0)


def check_hosts_options(alias: str, cfg: PoolConfig, options: Mapping[str, Any]) -> None:
    """A multi-host alias must bound connects and reads: ImproperlyConfigured naming what is missing.

    ``options`` is ``DATABASES[alias]["OPTIONS"]`` or the connection parameters built from it.
    """
    if cfg.hosts is None:
        return
    missing = [k for k in HOSTS_REQUIRED_OPTIONS if not options.get(k)]
    if missing:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['POOL']['hosts'] needs {' and '.join(repr(k) for k in missing)} in "
            f"DATABASES[{alias!r}]['OPTIONS'] (seconds, e.g. {{'connect_timeout': 2, 'read_timeout': 30}}): "
            "without them a dead or frozen host holds requests for the kernel's TCP timeouts instead of "
            "failing over."
        )


def _explicit_keys(setting: Any) -> tuple[str, ...]:
    """Keys the user set, counting those coming from a chosen preset."""
    if isinstance(setting, str):
        setting = {"preset": setting}
    keys = set(setting)
    preset = setting.get("preset")
    if isinstance(preset, str) and preset.lower() in PRESETS:
        keys |= set(PRESETS[preset.lower()])
    return tuple(keys)


def enabled(settings: Any = None) -> bool:
    """Whether pooling is on: ``AUTOPOOL_ENABLED`` in the environment wins over the setting."""
    env = os.environ.get("AUTOPOOL_ENABLED")
    if env is not None:
        return env.strip().lower() not in ("0", "false", "no", "off", "")
    if settings is None:
        from django.conf import settings as django_settings

        settings = django_settings
    return bool(getattr(settings, "AUTOPOOL_ENABLED", True))


# What a callable option must return, by key (the same rules as a plain value).
_ELASTIC_RULES: dict[str, dict[str, Any]] = {
    "django_core_pool_size": dict(minimum=0, integer=True, allow_none=True),
    "django_unload_timeout": dict(minimum=0, allow_none=True),
    "django_retire_interval": dict(minimum=0, extra="(exclusive)"),
    "django_retire_quantity": dict(minimum=0, integer=True),
}


def evaluate_option(alias: str, key: str, value: Dynamic | None) -> Number | None:
    """The current value of the number-or-callable option ``key`` of ``alias``, validated.

    A callable that raises or returns a bad value gives ImproperlyConfigured
    naming the alias and the key (never a bare TypeError deep in the pool).
    """
    if not callable(value):
        return value
    try:
        result = value()
    except Exception as exc:  # noqa: BLE001 - reported with the alias and key
        raise _fail(alias, key, f"the callable {_callable_name(value)} raised {type(exc).__name__}: {exc}") from exc
    rules = _ELASTIC_RULES.get(key, {})
    try:
        _check_number(alias, key, result, **rules)
        if key == "django_retire_interval" and result == 0:
            raise _fail(alias, key, "expected a number > 0, got 0")
    except ImproperlyConfigured as exc:
        raise _fail(
            alias, key, f"the callable {_callable_name(value)} returned {result!r}; {str(exc).split(': ', 1)[1]}"
        ) from None
    return result


def _callable_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


class checked:
    """A callable option wrapped so that each call validates its result (:func:`evaluate_option`)."""

    __slots__ = ("alias", "key", "fn")

    def __init__(self, alias: str, key: str, fn: Callable[[], Number]) -> None:
        self.alias, self.key, self.fn = alias, key, fn

    def __call__(self) -> Number | None:
        return evaluate_option(self.alias, self.key, self.fn)

    def __repr__(self) -> str:
        return f"checked({self.alias!r}, {self.key!r}, {self.fn!r})"


def _check_dialect(alias: str, value: Any) -> None:
    """None, a dialect name, or a synchronous Dialect instance; see the option's doc."""
    if value is None:
        return
    from sqlalchemy.engine.interfaces import Dialect

    choices = (
        "None, a name such as "
        + ", ".join(repr(n) for n in dialect_names())
        + ", or a sqlalchemy.engine.interfaces.Dialect instance"
    )
    if isinstance(value, str):
        name, _, driver = value.strip().lower().partition("+")
        if name not in DIALECT_NAMES or (driver and driver not in DIALECT_DRIVERS):
            raise _fail(alias, "dialect", f"unknown dialect {value!r}; valid choices: {choices}")
        return
    if isinstance(value, type) and issubclass(value, Dialect):
        raise _fail(
            alias,
            "dialect",
            f"expected a Dialect instance, got the class {value.__qualname__}; valid choices: {choices}",
        )
    if not isinstance(value, Dialect):
        raise _fail(alias, "dialect", f"expected {choices}; got {value!r}")
    if getattr(value, "is_async", False):
        raise _fail(
            alias,
            "dialect",
            f"{type(value).__qualname__} is an asyncio dialect: Django's MySQL "
            f"backend is synchronous; valid choices: {choices}",
        )
    if getattr(value, "name", None) not in DIALECT_NAMES or getattr(value, "driver", None) not in DIALECT_DRIVERS:
        raise _fail(
            alias,
            "dialect",
            f"{type(value).__qualname__} ({value.name}+{value.driver}) is not a dialect "
            f"of Django's MySQL drivers (mysqldb, pymysql); valid choices: {choices}",
        )


def dialect_names() -> tuple[str, ...]:
    return DIALECT_NAMES + tuple(f"{n}+{d}" for n in DIALECT_NAMES for d in DIALECT_DRIVERS)


def resolve_dialect(alias: str, value: Any, driver: Any) -> Any:
    """The Dialect instance for ``dialect`` (validated by :func:`parse`) and the driver in use.

    ``driver``: ``autopool.drivers.Driver``. A name or instance naming another
    driver than Django's gives ImproperlyConfigured: a mysqldb dialect pings a
    PyMySQL connection with a silent reconnect, for one.
    """
    if value is None:
        return None
    wanted: str | None
    if isinstance(value, str):
        _, _, wanted = value.strip().lower().partition("+")
    else:
        wanted = getattr(value, "driver", None)
    in_use = driver.name
    if wanted and wanted in DIALECT_DRIVERS and DIALECT_DRIVERS[wanted] != in_use:
        ours = (
            next(d for d, n in DIALECT_DRIVERS.items() if n == in_use) if in_use in DIALECT_DRIVERS.values() else None
        )
        hint = f"use 'mysql+{ours}', 'mysql' or None" if ours else "use None"
        raise _fail(
            alias,
            "dialect",
            f"{value!r} is for {DIALECT_DRIVERS[wanted]}, but Django's MySQL backend "
            f"uses {in_use} in this process; {hint}",
        )
    if isinstance(value, str):
        return driver.dialect()
    if getattr(value, "dbapi", None) is None:
        # ``MySQLDialect_mysqldb()`` as the seed's users wrote it: no DB-API
        # module, so the first failed ping would raise NoDBAPILoaded instead of
        # replacing the dead connection. A copy gets the driver's module.
        import copy

        value = copy.copy(value)
        value.dbapi = driver.module
    return value


__all__ = [
    "OPTIONS",
    "Option",
    "PoolConfig",
    "parse",
    "resolve",
    "enabled",
    "evaluate",
    "evaluate_option",
    "checked",
    "resolve_dialect",
]
