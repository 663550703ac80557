"""The wrappers autopool puts around Django's MySQL ``DatabaseWrapper``.

Plain wrapt wrappers ``(wrapped, instance, args, kwargs)``; ``patch.py``
registers them. One request's life:

* ``connect()`` calls ``get_new_connection()``: check a connection out of the
  alias's pool (``registry``/``pool``) and hand Django the raw DB-API
  connection, so queries pay no proxy. Django's session set-up
  (``init_connection_state``, ``SET autocommit``) runs once per *physical*
  connection, not per checkout.
* ``close()`` (end of request) reaches ``_close()``: the connection goes back
  to the pool, rolled back first only if a transaction may be open.
  ``_close()`` outside ``close()``, inside ``atomic()``, after errors or a
  failed health check really closes it: Django judged it broken or mid-
  transaction, so it is invalidated, never pooled.
"""

from __future__ import annotations

import _thread
import logging
import threading
import weakref
from os import getpid
from typing import Any

from . import config as config_mod
from . import drivers, fork, registry
from .leases import FAIRY_OWNER_ATTR, current_owner, owner_dead
from .leases import LEASED_ATTR as LEASED

logger = logging.getLogger("autopool")

FAIRY = "_autopool_fairy"  # the SQLAlchemy fairy checked out by this wrapper
REUSED = "_autopool_reused"  # set by checkout: skip the next init_connection_state
CLOSING = "_autopool_closing"  # inside close(): _close() may return to the pool
DISTRUST = "_autopool_distrust"  # inside a failed health check: never return
CHECKED_OUT_BY = "_autopool_checked_out_by"  # id() of the wrapper that checked FAIRY out
HOLDER = "_autopool_holder"  # the _Lease the pool's abandoned-connection scan watches
HOME = "_autopool_home"  # the _Lease of checkouts from the wrapper's own thread/greenlet
INIT = "autopool_initialized"  # record.info key: this dbapi connection is set up
SETUP = "autopool_session_setup"  # record.info key: statements redoing the driver's set-up after a reset

NO_DB_ALIAS = "__no_db__"

_enabled: bool | None = None


def pooling_enabled() -> bool:
    global _enabled
    if _enabled is None:
        _enabled = config_mod.enabled()
    return _enabled


def reset_enabled_cache(**kwargs: Any) -> None:
    global _enabled
    if kwargs.get("setting") in (None, "AUTOPOOL_ENABLED"):
        _enabled = None


def get_new_connection(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    settings_dict = instance.settings_dict
    pool_setting = settings_dict.get("POOL")
    if pool_setting is None or instance.alias == NO_DB_ALIAS or not pooling_enabled():
        return wrapped(*args, **kwargs)
    if getpid() != fork.pid:  # forked without Python's at-fork handlers (uWSGI): fork.py
        fork.after_in_child()
    d = instance.__dict__
    stale = d.pop(FAIRY, None)
    if stale is not None and d.get(CHECKED_OUT_BY) == id(instance):
        # The previous connection was dropped without close() (e.g.
        # ``connection.connection = None``): its state is unknown. (A shallow
        # copy's inherited lease is the original's business: left alone.)
        discard(stale)
    conn_params = args[0] if args else kwargs["conn_params"]
    key = registry.key_for(instance.alias, conn_params, pool_setting)
    entry = registry.get(instance.alias, key)
    if entry is None:
        entry = registry.create(
            instance.alias,
            key,
            pool_setting,
            instance.Database,
            _creator(wrapped, conn_params, drivers.for_module(instance.Database)),
            conn_params,
        )
    fairy = entry.pool.connect()
    conn = fairy.dbapi_connection
    rec = fairy._connection_record
    rec.__dict__[LEASED] = True
    fairy.__dict__[FAIRY_OWNER_ATTR] = _lease_owner(instance)
    d[FAIRY] = fairy
    d[CHECKED_OUT_BY] = id(instance)
    d[REUSED] = rec.info.get(INIT) is conn
    if entry.config.reset_session and SETUP not in rec.info:
        try:
            # Reads the login role: a round trip, once per physical connection.
            rec.info[SETUP] = entry.driver.session_setup(conn, conn_params)
        except BaseException:
            d.pop(FAIRY, None)
            d.pop(CHECKED_OUT_BY, None)
            d.pop(REUSED, None)
            d.pop(HOLDER, None)
            discard(fairy)  # never half set up in the pool
            raise
    if entry.server_data is not None and "mysql_server_data" not in d:
        d["mysql_server_data"] = entry.server_data
    return conn


class _Lease:
    """The owner that the pool's abandoned-connection scan sees for a checkout.

    The pool reclaims a checked-out connection once its owner is ``dead``.
    A Django connection belongs to its ``DatabaseWrapper``, which may be
    shared between threads (``inc_thread_sharing()``, ``LiveServerTestCase``,
    Django's ``ThreadTests``): a connection first used by a helper thread
    lives on in the wrapper after that thread ends. So the lease is dead only
    when the wrapper was garbage collected, or when the wrapper is not shared
    and its home thread or greenlet (the one Django ties it to) has ended.
    """

    __slots__ = ("wrapper", "home", "__weakref__")

    def __init__(self, wrapper: Any, home: Any) -> None:
        self.wrapper = weakref.ref(wrapper)
        self.home = home  # weak reference to the home thread/greenlet, or None if unknown

    @property
    def dead(self) -> bool:
        wrapper = self.wrapper()
        if wrapper is None:
            return True
        if wrapper.allow_thread_sharing or self.home is None:
            return False
        return owner_dead(self.home)


def _lease_owner(instance: Any) -> Any:
    d = instance.__dict__
    if instance._thread_ident == _thread.get_ident():
        home = current_owner()
        lease = d.get(HOME)
        # Kept on the wrapper for its next checkouts from the same greenlet or
        # thread (CPython hands out one weak reference per object, so ``is``
        # compares homes, and the reference below is the same object each
        # time); a wrapper shared by greenlets of an unpatched thread gets a
        # lease per home.
        if lease is None or lease.home is not home:
            lease = d[HOME] = _Lease(instance, home)
        return weakref.ref(lease)
    # Connecting from another thread of a shared wrapper: its home is the
    # thread that created it (unknown for a greenlet: then only the
    # wrapper's collection ends the lease).
    thread_home: weakref.ReferenceType[threading.Thread] | None = next(
        (weakref.ref(t) for t in threading.enumerate() if t.ident == instance._thread_ident), None
    )
    lease = _Lease(instance, thread_home)
    d[HOLDER] = lease
    return weakref.ref(lease)


def _creator(wrapped: Any, conn_params: dict[str, Any], driver: drivers.Driver) -> Any:
    # The stock get_new_connection does not use ``self``; binding None keeps
    # the pool from holding a DatabaseWrapper (and its thread's state) alive.
    func = getattr(wrapped, "__func__", wrapped)

    def connect(params: dict[str, Any] | None = None) -> Any:
        # ``params``: one host's parameters for a multi-host alias (hosts.py).
        conn = func(None, driver.connect_params(conn_params if params is None else params))
        driver.prepare(conn)
        return conn

    return connect


def init_connection_state(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    d = instance.__dict__
    if d.pop(REUSED, False):
        return None
    result = wrapped(*args, **kwargs)
    fairy = d.get(FAIRY)
    if fairy is not None and fairy.dbapi_connection is instance.connection:
        fairy._connection_record.info[INIT] = instance.connection
        entry = fairy._pool.autopool_entry
        if entry.server_data is None and "mysql_server_data" in d:
            entry.server_data = d["mysql_server_data"]
    return result


def set_autocommit(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if FAIRY in instance.__dict__:
        autocommit = args[0] if args else kwargs["autocommit"]
        try:
            # Read from the server status of the last reply: no round trip.
            same = bool(instance.connection.get_autocommit()) == bool(autocommit)
        except Exception:  # noqa: BLE001 - let the stock path raise properly
            same = False
        if same:
            return None
    return wrapped(*args, **kwargs)


def _with_flag(flag: str) -> Any:
    """A wrapper that marks a leased wrapper with ``flag`` for the call's duration."""

    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        d = instance.__dict__
        if FAIRY not in d:
            return wrapped(*args, **kwargs)
        d[flag] = True
        try:
            return wrapped(*args, **kwargs)
        finally:
            d.pop(flag, None)

    return wrapper


# Inside close(), and only there, _close() may return the connection to the pool.
close = _with_flag(CLOSING)
# The only close() this method makes follows a failed is_usable(): never pool
# it. Hooked here, not on is_usable(), which subclasses and tests replace.
close_if_health_check_failed = _with_flag(DISTRUST)


def close_dbapi_connection(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Django's ``_close()`` (closes the DB-API connection): a leased connection goes back to its pool."""
    d = instance.__dict__
    if FAIRY not in d:
        return wrapped(*args, **kwargs)
    if getpid() != fork.pid:  # leased before a fork that ran no at-fork handler (uWSGI): fork.py
        fork.after_in_child()
        if FAIRY not in d:  # the reset let go of it: nothing of this process to close
            return wrapped(*args, **kwargs)
    try:
        return _close_leased(wrapped, instance, args, kwargs)
    finally:
        # Only now: while the lease lives, the pool's abandoned-connection
        # scan (another thread) must not take the connection being returned.
        d.pop(HOLDER, None)


def _close_leased(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    d = instance.__dict__
    fairy = d.pop(FAIRY)
    d.pop(REUSED, None)
    if fairy._connection_record is None:
        # The pool reclaimed this checkout as abandoned and closed its
        # connection already: nothing left to return or close.
        d.pop(CHECKED_OUT_BY, None)
        return None
    if d.pop(CHECKED_OUT_BY, None) != id(instance):
        # A shallow copy (``copy.copy(connection)``, as Django's own tests
        # make) shares the original wrapper's lease and DB-API connection.
        # Pooling it would hand a connection the original still uses to the
        # next checkout. Do what stock Django does: close the copy's
        # connection, which, if still the shared one, ends the lease.
        if instance.connection is fairy.dbapi_connection:
            discard(fairy)
            return None
        return wrapped(*args, **kwargs)
    if instance.connection is not fairy.dbapi_connection:
        # Code replaced the connection object: close that one as stock does.
        discard(fairy)
        return wrapped(*args, **kwargs)
    if d.get(CLOSING) and not d.get(DISTRUST) and not instance.in_atomic_block and not instance.errors_occurred:
        release(instance, fairy)
    else:
        discard(fairy)
    return None


def release(instance: Any, fairy: Any) -> None:
    """Return a healthy connection to its pool, never inside a transaction."""
    entry = fairy._pool.autopool_entry
    rec = fairy._connection_record
    rec.__dict__.pop(LEASED, None)
    if entry.inherited:
        # Checked out inside atomic() when this process was forked (fork.py): the
        # session is the parent's and the socket reads /dev/null here. Neither
        # reset nor pool it: let go of it (SQLAlchemy's detach()).
        fairy.detach()
        return
    if entry.host_set is not None and entry.host_set.stale(rec):
        # Multi-host alias: this connection's host went down, or traffic
        # failed back to an earlier host, while it was checked out.
        discard(fairy)
        return
    cfg = entry.config
    conn = fairy.dbapi_connection
    driver = entry.driver
    try:
        if not driver.is_open(conn):
            discard(fairy)
            return
        if driver.unread_result(conn):
            # A streaming cursor (SSCursor) not read to its end, or a further
            # result of a CALL never fetched: the next user's command would
            # fail ("Commands out of sync") or first read an unbounded stream.
            logger.info(
                "%r returned with a result still unread (a streaming cursor not read to its end?); "
                "closing the connection",
                entry.alias,
            )
            driver.forget_unread(conn)
            discard(fairy)
            return
        if driver.pending_input(conn):
            # A reply nobody read (a command sent past the driver, or one connection used
            # by two greenlets at once) would be the next user's result; or the server
            # closed the session. Checked before the rollback below reads from it; a
            # streamed result is the case above.
            logger.info(
                "%r returned with bytes waiting on its socket (an unread reply, or the server "
                "ended the session); closing the connection",
                entry.alias,
            )
            discard(fairy)
            return
        if cfg.sa_reset_on_return is None and (not instance.autocommit or driver.may_be_in_transaction(conn)):
            if not cfg.django_reset_on_return:
                logger.warning(
                    "%r returned inside a transaction with no reset configured "
                    "(django_reset_on_return=False, reset_on_return=None); closing it",
                    entry.alias,
                )
                discard(fairy)
                return
            conn.rollback()
            entry.counters.rollbacks_on_return += 1
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("rolled back a connection of %r on return", entry.alias)
        if cfg.reset_session:
            driver.reset_session(conn, rec.info.get(SETUP, ()))
            rec.info.pop(INIT, None)
            entry.counters.session_resets += 1
        if not restore_database(entry, driver, conn):
            discard(fairy)
            return
    except Exception as exc:  # noqa: BLE001 - a failed reset means a broken connection
        logger.info("reset on return failed for %r (%s); closing the connection", entry.alias, type(exc).__name__)
        discard(fairy)
        return
    fairy.close()


def restore_database(entry: Any, driver: drivers.Driver, conn: Any) -> bool:
    """Undo a request's ``USE other``: False if the connection cannot be put back.

    The driver reads the current database from the server's session tracking
    without a round trip; only a connection that changed it pays one
    (``select_db``). Its own database is the one it was opened in: NAME, or
    the one OPTIONS chose (``db``, a ``read_default_file``). A connection
    opened in no database cannot go back to "no database": one that chose
    a database is closed instead.
    """
    current = driver.schema(conn)
    if current is drivers.UNKNOWN:
        return True
    expected = driver.home_schema(conn)
    if expected is drivers.UNKNOWN:
        expected = entry.params.get("database") or None
    if current == expected:
        return True
    if expected is None:
        logger.info("%r (no NAME) returned in database %r; closing the connection", entry.alias, current)
        return False
    conn.select_db(expected)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("a connection of %r returned in another database; back to its own", entry.alias)
    return True


def discard(fairy: Any) -> None:
    """Physically close a checked-out connection and free its pool slot."""
    rec = fairy._connection_record
    if rec is not None:
        rec.__dict__.pop(LEASED, None)
    entry = getattr(fairy._pool, "autopool_entry", None)
    if entry is not None and entry.inherited:
        fairy.detach()  # the parent's session, in a forked child: see release()
        return
    if fairy.dbapi_connection is None:
        return
    try:
        fairy.invalidate()
    except Exception:  # noqa: BLE001 - closing a dead connection may fail; the slot is freed anyway
        logger.debug("error while closing a connection", exc_info=True)


def database_error_exit(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``DatabaseErrorWrapper.__exit__``: tell a multi-host alias's hosts about a failed query.

    Installed only while a multi-host pool exists (``patch.enable_error_hook``).
    The error itself is untouched: Django raises it as its own exception.
    """
    exc_value = args[1] if len(args) > 1 else kwargs.get("exc_value")
    if exc_value is not None:
        fairy = getattr(instance.wrapper, "__dict__", {}).get(FAIRY)
        if fairy is not None:
            entry = getattr(fairy._pool, "autopool_entry", None)
            if entry is not None and entry.host_set is not None:
                try:
                    entry.host_set.on_error(fairy._connection_record, exc_value)
                except Exception:  # noqa: BLE001 - never replace the request's own error
                    logger.exception("failover bookkeeping failed for %r", entry.alias)
    return wrapped(*args, **kwargs)
