"""Cooperative mysqlclient under gevent.

mysqlclient is C: while the server works on a query, ``mysql_real_query()``
blocks the whole gevent hub, so 50 greenlets running ``SELECT SLEEP(0.2)``
take 10 s. Its low-level connection can split a query into ``send_query()``
and ``read_query_result()``; waiting for the socket in between with gevent's
``wait_read`` lets the hub run other greenlets meanwhile. Results, errors and
multi-statement handling stay mysqlclient's own: only the wait changes.

Connecting (TCP, handshake, TLS, authentication) runs in gevent's thread
pool under monkey patching, so a slow or frozen server stalls only the
greenlet that connects. A query interrupted while it waits (``gevent.kill``,
``gevent.Timeout``) closes its connection: its reply would otherwise be read
by the next command.

Still blocking: ``ping``/``commit``/``rollback`` (short server work),
``next_result()`` of multi-statement queries (the next result may already sit
in the client library's buffer, where a socket wait would never wake), and
reading a reply once its first bytes arrived: a reply that stops mid-stream
blocks the hub until ``read_timeout``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

LOST_CONNECTION = 2013


def socket_patched() -> bool:
    """True when gevent has monkey patched ``socket`` in this process."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("socket"))


def wants_cooperative(setting: Any, driver_name: str) -> bool:
    if driver_name != "mysqlclient" or setting is False:
        return False
    if setting is True:
        return True
    return socket_patched()


_classes: dict[type, type] = {}


def _cooperative_class(base: Any) -> type:
    """A subclass of the driver's Connection whose ``query()`` waits cooperatively."""
    cls = _classes.get(base)
    if cls is not None:
        return cls
    from gevent.hub import get_hub
    from gevent.socket import wait
    from MySQLdb import _mysql

    send_query = _mysql.connection.send_query
    read_query_result = _mysql.connection.read_query_result

    def query(self: Any, sql: Any) -> None:
        if isinstance(sql, bytearray):
            sql = bytes(sql)
        send_query(self, sql)
        try:
            # One read watcher per connection and hub, as gevent's own sockets
            # keep: making and closing one per query costs more than the wait.
            watcher = self._autopool_watcher
            loop = get_hub().loop
            if watcher is None or watcher.loop is not loop:
                if watcher is not None:
                    watcher.close()
                watcher = self._autopool_watcher = loop.io(self.fileno(), 1)
            wait(watcher, self._autopool_read_timeout)
        except TimeoutError:
            # The reply was never read: the protocol state is unknown, so the
            # connection is unusable, exactly as after a driver read timeout.
            self.close()
            raise self.OperationalError(
                LOST_CONNECTION, "Lost connection to server during query (read_timeout expired)"
            ) from None
        except BaseException:
            # Interrupted (gevent.kill, gevent.Timeout) with the reply still
            # on its way: the next command would read this query's reply as
            # its own, and every later one the reply before it, handing one
            # request's results to the next user of the connection. Close it.
            self.close()
            raise
        read_query_result(self)

    def close(self: Any) -> None:
        watcher = self.__dict__.get("_autopool_watcher")
        if watcher is not None:
            self._autopool_watcher = None
            hub = get_hub()
            if watcher.loop is hub.loop:
                # A greenlet still waiting on it (one connection misused by two
                # greenlets at once) gets an error instead of waiting forever.
                hub.cancel_wait(
                    watcher,
                    self.OperationalError(
                        LOST_CONNECTION, "Lost connection to server during query (connection closed)"
                    ),
                    True,
                )
            else:
                watcher.close()
        # Idempotent: a connection closed above is closed again by Django or
        # the pool, and mysqlclient raises on a second close().
        if self.open:
            base.close(self)

    cls = type(f"Cooperative{base.__name__}", (base,), {"query": query, "close": close, "__module__": __name__})
    _classes[base] = cls
    return cls


def make_cooperative(conn: Any, read_timeout: float | None = None) -> Any:
    """Switch one mysqlclient connection to cooperative waits (in place)."""
    conn.__class__ = _cooperative_class(type(conn))
    conn._autopool_read_timeout = read_timeout
    conn._autopool_watcher = None
    return conn


def forget_watcher(conn: Any) -> None:
    """After fork (``fork.py``): drop the read watcher made for the parent's socket.

    One a greenlet still waits on is left running: the descriptor now reads
    /dev/null, so that wait ends with a lost-connection error instead of never.
    """
    watcher = getattr(conn, "__dict__", {}).get("_autopool_watcher")
    if watcher is None:
        return
    conn._autopool_watcher = None
    if watcher.callback is None:
        watcher.close()


def _call(func: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    try:
        return True, func(*args)
    except BaseException as exc:  # noqa: BLE001 - handed back to the calling greenlet
        return False, exc


def wrap_creator(connect: Callable[[], Any], conn_params: Mapping[str, Any]) -> Callable[[], Any]:
    read_timeout = conn_params.get("read_timeout")
    off_hub = socket_patched()
    if off_hub:
        # MySQLdb.connect() imports MySQLdb.connections on its first call. Done first in a pool
        # thread, that import takes importlib's module lock, which monkey patching made a gevent
        # lock: concurrent first connects then wait on it across threads, and such a wait can
        # hang a pool thread for good (seen under failover load). Import it here, in the hub's
        # thread, so connects in pool threads only find modules already loaded.
        import MySQLdb.connections  # noqa: F401

    def cooperative_connect(*args: Any) -> Any:
        # ``args``: the parameters of one host of a multi-host alias (hosts.py), else none.
        if off_hub:
            # mysql_real_connect() (TCP connect, handshake, TLS, auth) blocks
            # in C for as long as the server takes: a frozen server would
            # stop the whole hub for connect_timeout. In gevent's thread
            # pool (mysqlclient releases the GIL there) only this greenlet
            # waits. Once per physical connection, so the hand-off is cheap.
            from gevent import get_hub

            ok, conn = get_hub().threadpool.apply(_call, (connect, args))
            if not ok:
                # Raised here, not in the worker thread: gevent would print a traceback to stderr
                # for every failed connect (a failover probes dead hosts once a second).
                raise conn
        else:
            conn = connect(*args)
        return make_cooperative(conn, read_timeout)

    return cooperative_connect
