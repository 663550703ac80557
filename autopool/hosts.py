"""Multi-host aliases (``POOL["hosts"]``): host choice, health and failover.

An alias with ``hosts`` still has one pool: its ``pool_size``/``max_overflow``
bound the connections to all hosts together. The pool's creator is
:meth:`HostSet.create_connection`: SQLAlchemy calls it with the connection record, it picks a
host by ``host_policy``, connects, checks the host's health and writes the
host into ``record.info`` (``HOST_KEY``). Nothing runs per checkout.

Health
    A host is healthy when a connection opens and, on a Galera node
    (``@@wsrep_on``), ``wsrep_ready=ON`` and ``wsrep_local_state=4`` (Synced).
    Checked when a connection is opened and after a connection error, never
    per checkout.

Failure
    A connection error on a query (``on_error``, called from Django's error
    path) marks the host down when the node says it is not ready (1047, 1180)
    or when a fresh check of the host fails after a lost connection (2006,
    2013, 2055: one killed connection does not fail a healthy host over).
    A down host's idle connections are closed at once and its checked-out
    ones when they come back (``stale``), so no other request gets one; it is
    avoided for ``host_down_backoff`` seconds (doubling per failed probe up to
    ``host_down_backoff_max``), then probed by the housekeeping task. The
    request that hit the error gets it as Django's ``OperationalError``:
    nothing is retried, so a write is never applied twice.

Fail-back
    With ``failover``, a host that is healthy again takes new connections at
    once, and connections to hosts later in the list are retired (idle ones
    now, checked-out ones on return), so traffic moves back.

All hosts down
    A checkout keeps trying (respecting back-offs) until the pool's
    ``timeout`` and then raises :class:`~autopool.errors.NoHealthyHost`, a
    Django ``OperationalError`` naming the alias and each host's last error.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from .errors import NoHealthyHost
from .housekeeping import ROUND_INTERVAL

logger = logging.getLogger("autopool")

DEFAULT_PORT = 3306  # MySQL's and MariaDB's, when an alias gives no PORT
HOST_KEY = "autopool_host"  # record.info: (host index, host generation) of the connection

FAILOVER = "failover"
ROUND_ROBIN = "round_robin"

# The node itself says it cannot serve: Galera's "WSREP has not yet prepared node for application
# use" (ER_UNKNOWN_COM_ERROR) and "Got error ... during COMMIT" when it left the primary component.
NOT_READY = frozenset({1047, 1180})
# The connection died: server gone away, lost during a query, lost at handshake (CR_SERVER_LOST_EXTENDED).
LOST = frozenset({2006, 2013, 2055})
# The server cannot be reached: no socket, connection refused / unreachable.
UNREACHABLE = frozenset({2002, 2003})
DOWN_ERRORS = NOT_READY | LOST | UNREACHABLE
# At connect time these also mean "this host cannot give us a connection now, try the next":
# unknown host (2005), too many connections (1040, 1203), shutdown in progress (1053), and
# connection killed (1927). Anything else (access denied, unknown database) is a configuration
# error, the same on every host: raised at once.
CONNECT_ERRORS = DOWN_ERRORS | frozenset({2005, 1040, 1203, 1053, 1927})

_STATUS_SQL = (
    "SELECT @@global.wsrep_on, "
    "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
    "WHERE VARIABLE_NAME = 'WSREP_READY'), "
    "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
    "WHERE VARIABLE_NAME = 'WSREP_LOCAL_STATE')"
)
_STATUS_SQL_FALLBACK = "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state')"
_UNKNOWN_SYSTEM_VARIABLE = 1193  # MySQL without Galera: no @@wsrep_on
SYNCED = "4"


def error_code(exc: BaseException) -> int | None:
    """The MySQL error number of a driver (or Django-wrapped) exception, if any."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0]
    cause = exc.__cause__
    if cause is not None and cause is not exc:
        return error_code(cause)
    return None


def _describe(error: Any) -> str:
    if isinstance(error, BaseException):
        return f"{type(error).__name__}{tuple(error.args)!r}" if error.args else type(error).__name__
    return str(error)


def check_health(conn: Any) -> tuple[bool, str]:
    """``(healthy, why)`` for a fresh DB-API connection: one query (two on MySQL-based Galera)."""
    cur = conn.cursor()
    try:
        try:
            cur.execute(_STATUS_SQL)
        except Exception as exc:  # noqa: BLE001 - decided by the error number below
            code = error_code(exc)
            if code == _UNKNOWN_SYSTEM_VARIABLE:
                return True, "no wsrep"
            if code in LOST or code in UNREACHABLE:
                raise
            # Galera on MySQL (no information_schema.GLOBAL_STATUS): ask with SHOW.
            cur.execute(_STATUS_SQL_FALLBACK)
            status = {str(k).lower(): str(v) for k, v in cur.fetchall()}
            ready, state = status.get("wsrep_ready"), status.get("wsrep_local_state")
        else:
            wsrep_on, ready, state = cur.fetchone()
            if not wsrep_on or str(wsrep_on).upper() in ("0", "OFF"):
                return True, "no wsrep"
        ready, state = str(ready).upper(), str(state)
        if ready == "ON" and state == SYNCED:
            return True, "Synced"
        return False, f"Galera node not ready: wsrep_ready={ready}, wsrep_local_state={state} (4 is Synced)"
    finally:
        try:
            cur.close()
        except Exception:  # noqa: BLE001
            pass


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - a connection to a failing host may not close cleanly
        pass


class Host:
    """One server of a multi-host alias and what autopool knows about it."""

    __slots__ = (
        "index",
        "host",
        "port",
        "params",
        "up",
        "down_until",
        "failures",
        "last_error",
        "generation",
        "check_lock",
        "checked_at",
        "down_since",
    )

    def __init__(self, index: int, host: str, port: int, params: dict[str, Any]) -> None:
        self.index, self.host, self.port, self.params = index, host, port, params
        self.up = True  # unknown counts as healthy: the first connect checks it
        self.down_until = 0.0
        self.down_since: float | None = None
        self.failures = 0
        self.last_error: str | None = None
        # Bumped when the host's connections must go (it went down, or a failover alias fails back):
        # a connection recorded with an older generation is closed instead of pooled.
        self.generation = 0
        self.check_lock = threading.Lock()
        self.checked_at = -1.0

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __repr__(self) -> str:
        return f"<Host {self.label} {'up' if self.up else 'down'}>"


# The sets whose pools are open, in creation order (what status() lists): added by HostSet.attach(),
# removed by HostSet.detach() when the registry closes or forgets the pool. Weak: a set the registry
# dropped without detaching goes with it.
_attached: weakref.WeakValueDictionary[int, HostSet] = weakref.WeakValueDictionary()
_serials = itertools.count()


class HostSet:
    """The hosts of one alias: the pool's creator, health state and failover logic."""

    def __init__(
        self,
        alias: str,
        cfg: Any,
        conn_params: Mapping[str, Any],
        connect: Callable[..., Any],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = alias
        self.policy = cfg.host_policy
        self.backoff = float(cfg.host_down_backoff)
        self.backoff_max = float(cfg.host_down_backoff_max)
        self.timeout = float(cfg.timeout)
        self._connect = connect  # connect(params) -> DB-API connection
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._rr = itertools.count()
        self._pool: weakref.ReferenceType[Any] | None = None
        self._serial = next(_serials)
        default_port = int(conn_params.get("port") or DEFAULT_PORT)
        base = {k: v for k, v in conn_params.items() if k != "unix_socket"}
        self.hosts: list[Host] = []
        for i, (host, port) in enumerate(cfg.hosts):
            port = port or default_port
            self.hosts.append(Host(i, host, port, dict(base, host=host, port=port)))

    def __repr__(self) -> str:
        return f"<HostSet {self.name!r} {self.policy} {self.hosts!r}>"

    # -- wiring ------------------------------------------------------------------
    def attach(self, pool: Any) -> None:
        """Serve ``pool`` (the registry calls this once the pool exists); :func:`status` lists the set from now on."""
        self._pool = weakref.ref(pool)
        _attached[self._serial] = self

    def detach(self) -> None:
        """The registry closed or forgot the pool: :func:`status` no longer lists this set."""
        _attached.pop(self._serial, None)

    @property
    def pool(self) -> Any:
        return self._pool() if self._pool is not None else None

    # -- the creator -------------------------------------------------------------
    def create_connection(self, connection_record: Any) -> Any:
        """The pool's creator: a connection to a healthy host, recorded in the record's info.

        SQLAlchemy passes the record to a one-argument creator.
        """
        deadline = self._clock() + self.timeout
        rounds = 0
        while True:
            for host in self._candidates():
                gen = host.generation
                conn = self._open(host)
                if conn is None:
                    continue
                if connection_record is not None:
                    connection_record.info[HOST_KEY] = (host.index, gen)
                return conn
            now = self._clock()
            if now >= deadline:
                break
            # Nothing healthy and every back-off running: wait for the first to expire (or for the
            # housekeeping task to bring a host back), never past the deadline.
            rounds += 1
            wake = min((h.down_until for h in self.hosts if not h.up), default=now)
            self._sleep(max(0.01, min(wake - now, deadline - now, 0.05 * 2 ** min(rounds, 4))))
        raise NoHealthyHost(
            f"no healthy host for {self.name!r} within {self.timeout:g} s (host_policy={self.policy}): "
            + "; ".join(f"{h.label}: {h.last_error or 'not tried'}" for h in self.hosts)
        )

    def _candidates(self) -> list[Host]:
        """Hosts to try now, in order: the healthy ones by policy; if none, those whose back-off ran out."""
        up = [h for h in self.hosts if h.up]
        if up:
            if self.policy == ROUND_ROBIN and len(up) > 1:
                k = next(self._rr) % len(up)
                up = up[k:] + up[:k]
            return up
        now = self._clock()
        return [h for h in self.hosts if h.down_until <= now]

    def _open(self, host: Host) -> Any | None:
        """A checked connection to ``host``, or None (and the host marked down)."""
        gen = host.generation
        try:
            conn = self._connect(host.params)
        except Exception as exc:
            if error_code(exc) in CONNECT_ERRORS or isinstance(exc, OSError):
                self.mark_down(host, exc, generation=gen)
                return None
            raise
        try:
            healthy, why = check_health(conn)
        except Exception as exc:  # noqa: BLE001 - any failure of the check is the host's
            _close_quietly(conn)
            self.mark_down(host, exc, generation=gen)
            return None
        if not healthy:
            _close_quietly(conn)
            self.mark_down(host, why, generation=gen)
            return None
        if host.generation != gen and not host.up:
            # Marked down by someone else while this connect ran: trust the newer verdict.
            _close_quietly(conn)
            return None
        if not host.up:
            self.mark_up(host)
        return conn

    # -- state changes -----------------------------------------------------------
    def mark_down(self, host: Host, error: Any, generation: int | None = None) -> None:
        """Avoid ``host`` for the back-off and retire its connections (idle now, checked out on return)."""
        now = self._clock()
        with self._lock:
            if not host.up and (generation is not None and generation != host.generation or now < host.down_until):
                # Already down, and its back-off is running or this failure is from before it went
                # down: note the error, but do not lengthen the back-off for concurrent attempts.
                host.last_error = _describe(error)
                return
            host.failures += 1
            delay = min(self.backoff * 2 ** (host.failures - 1), self.backoff_max)
            host.down_until = now + delay
            host.last_error = _describe(error)
            was_up = host.up
            host.up = False
            if was_up:
                host.generation += 1
                host.down_since = now
        if was_up:
            logger.warning(
                "host %s of %r is down (%s); its connections are closed and it is avoided for %.1f s",
                host.label,
                self.name,
                host.last_error,
                delay,
            )
            self._evict(lambda index: index == host.index, invalidate=True)
        else:
            logger.info(
                "host %s of %r is still down (%s); next probe in %.1f s", host.label, self.name, host.last_error, delay
            )

    def mark_up(self, host: Host) -> None:
        """``host`` is healthy again; with ``failover``, move traffic back to it."""
        with self._lock:
            if host.up:
                return
            host.up = True
            host.failures = 0
            host.down_until = 0.0
            down_for = self._clock() - host.down_since if host.down_since is not None else 0.0
            host.down_since = None
            later = [h for h in self.hosts if h.index > host.index] if self.policy == FAILOVER else []
            for h in later:
                h.generation += 1
        logger.warning(
            "host %s of %r is healthy again after %.1f s%s",
            host.label,
            self.name,
            down_for,
            "; moving its connections back" if later else "",
        )
        if later:
            self._evict(lambda index: index > host.index, invalidate=False)

    def _evict(self, which: Callable[[int], bool], invalidate: bool) -> int:
        pool = self.pool
        evict = getattr(pool, "evict", None)
        if evict is None:
            return 0

        def match(rec: Any) -> bool:
            info = rec.info.get(HOST_KEY)
            return info is not None and which(info[0])

        return int(evict(match, invalidate=invalidate))

    def stale(self, rec: Any) -> bool:
        """True for a connection whose host went down (or was failed away from) since it was opened."""
        info = rec.info.get(HOST_KEY) if rec is not None else None
        if info is None:
            return False
        index, gen = info
        return bool(self.hosts[index].generation != gen)

    # -- errors seen by requests ---------------------------------------------------
    def on_error(self, rec: Any, exc: BaseException) -> None:
        """A query on a connection of this alias raised ``exc`` (from Django's error path)."""
        code = error_code(exc)
        if code not in DOWN_ERRORS or rec is None:
            return
        info = rec.info.get(HOST_KEY)
        if info is None:
            return
        index, gen = info
        host = self.hosts[index]
        if gen != host.generation:
            return  # the host already went down (or was failed away from) since this connection opened
        if code in NOT_READY:
            self.mark_down(host, exc, generation=gen)
            return
        # A lost connection may be this connection's fate alone (KILL, read_timeout): look at the host.
        # Errors that happened before a check began share that check's verdict.
        seen = self._clock()
        with host.check_lock:
            if host.checked_at >= seen or host.generation != gen:
                return
            host.checked_at = self._clock()
            healthy, why = self._probe(host)
            if healthy:
                logger.info(
                    "lost a connection to host %s of %r (%s), but the host answers: only that connection is closed",
                    host.label,
                    self.name,
                    _describe(exc),
                )
            else:
                self.mark_down(host, why, generation=gen)

    def _probe(self, host: Host) -> tuple[bool, Any]:
        try:
            conn = self._connect(host.params)
        except Exception as exc:  # noqa: BLE001 - any failure to connect is the host's
            return False, exc
        try:
            return check_health(conn)
        except Exception as exc:  # noqa: BLE001
            return False, exc
        finally:
            _close_quietly(conn)

    # -- housekeeping ---------------------------------------------------------------
    def housekeep(self) -> float:
        """Probe the down hosts whose back-off ran out (run by the housekeeping task)."""
        pool = self.pool
        now = self._clock()
        if pool is None or getattr(pool, "closed", False):
            return ROUND_INTERVAL
        for host in self.hosts:
            if host.up or host.down_until > now:
                continue
            with host.check_lock:
                if host.up:
                    continue
                host.checked_at = self._clock()
                healthy, why = self._probe(host)
            if healthy:
                self.mark_up(host)
            else:
                self.mark_down(host, why)
        now = self._clock()
        due = [h.down_until for h in self.hosts if not h.up]
        return min(due + [now + ROUND_INTERVAL]) - now  # seconds until the next round

    # -- introspection ----------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """One dict per host: where it is, whether it is used, and why not."""
        now = self._clock()
        counts: dict[int, list[int]] = {h.index: [0, 0] for h in self.hosts}
        pool = self.pool
        if pool is not None:
            for column, records in enumerate(pool.connection_records()):
                for rec in records:
                    info = rec.info.get(HOST_KEY)
                    if info is not None and rec.dbapi_connection is not None:  # not an invalidated entry
                        counts[info[0]][column] += 1
        return [
            {
                "alias": self.name,
                "host": h.host,
                "port": h.port,
                "up": h.up,
                "failures": h.failures,
                "down_for": None if h.down_since is None else now - h.down_since,
                "next_probe_in": None if h.up else max(h.down_until - now, 0.0),
                "last_error": h.last_error,
                "idle": counts[h.index][0],
                "checked_out": counts[h.index][1],
            }
            for h in self.hosts
        ]


def status(alias: str | None = None) -> list[dict[str, Any]]:
    """Per-host state of every multi-host pool of this process (of ``alias`` only if given)."""
    rows: list[dict[str, Any]] = []
    for hs in list(_attached.values()):
        if alias is None or hs.name == alias:
            rows.extend(hs.status())
    return rows
