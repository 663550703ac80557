"""``POOL["pool_mode"] = "transaction"``: hold a server connection only while it is used.

In this mode, outside ``atomic()``, with autocommit on and outside
:func:`pinned`, a connection goes back to the pool as soon as a statement's
result is in the client (Django's MySQL cursors buffer results), and the next
statement checks one out again. So a view that waits on something else
between two queries holds no server connection while it waits.

How, on Django's ``DatabaseWrapper`` (wrappers registered by ``patch.py``;
each returns at once for a wrapper not in this mode, and those called on
every request are registered only once a wrapper first enters this mode):

* ``make_cursor`` / ``make_debug_cursor`` hand out :class:`TxCursorWrapper`
  (a subclass of Django's cursor wrappers) whose ``execute``/``executemany``/
  ``callproc`` *park* the wrapper after a statement: its DB-API cursors are
  detached (``connection = None``: a stale cursor keeps its buffered rows but
  can never touch a connection another request now holds, e.g. in
  ``close()``), ``wrapper.connection`` is set to None and the connection goes
  back through ``hooks.release`` (rollback only if a transaction may be open).
* ``connect`` re-attaches a parked wrapper directly: a pool checkout, with
  none of ``connect()``'s per-request resets and no ``connection_created``
  signal, unless the physical connection was never set up (then Django's
  set-up and the signal run once for it). The next statement on a cursor
  bound to an earlier attachment (even of the same physical connection)
  rebinds a fresh DB-API cursor; ``create_cursor`` re-attaches too, for a
  statement run between ``_cursor()``'s ``ensure_connection()`` and it.
* ``set_autocommit(True)`` (the end of ``atomic()``, or of a manual
  transaction) parks the wrapper; ``get_autocommit`` answers from Django's
  flag for a parked wrapper instead of checking a connection out.
* ``close`` forgets the parked state: the next connection comes from a full
  ``connect()``.
* ``disable_constraint_checking`` / ``enable_constraint_checking`` pin the
  connection in between (``SET foreign_key_checks=0`` is session state).

Held, never parked: inside ``atomic()``, after ``set_autocommit(False)``,
inside ``connect()`` (``connection_created`` receivers), inside
:func:`pinned`, while constraint checks are off, while a transaction opened
with raw SQL is open (the server status flags of the reply say so), and while a cursor has a result still
to read from the server
(a streaming cursor class, a further result of a ``CALL``), until that
cursor is closed. A statement that fails outside those discards its
connection (never pooled), except an ``IntegrityError``/``DataError``, which
the server answered cleanly.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DataError, IntegrityError, ProgrammingError
from django.db.backends import utils as django_utils
from django.db.backends.signals import connection_created

from . import hooks

logger = logging.getLogger("autopool")

TX = "_autopool_tx"  # wrapper.__dict__: its _TxState, present only in transaction mode
PARKED = "_autopool_parked"  # wrapper.__dict__: connection given back after a statement
CONNECTING = "_autopool_connecting"  # wrapper.__dict__: inside connect(): never park
PINS = "_autopool_pins"  # wrapper.__dict__: depth of pinned() blocks (and constraint checks off)
FK_PINS = "_autopool_fk_pins"  # wrapper.__dict__: pins taken by disable_constraint_checking()

SERVER_STATUS_IN_TRANS = 0x0001
SERVER_MORE_RESULTS_EXIST = 0x0008
TRANSACTION = "transaction"


# Attachment tokens: a cursor bound under one attachment must rebind under the next, even when
# the pool hands back the same physical connection.
_TOKENS = itertools.count(1)


class SessionStateError(ProgrammingError):
    """A statement that sets session state ran outside a transaction or ``pinned()``.

    Raised instead of running it when ``POOL["session_state_guard"] = "error"``.
    """


class _TxState:
    """What a wrapper in transaction mode keeps between its statements."""

    __slots__ = ("cursors", "stream", "guard", "owner", "token")

    def __init__(self, guard: str | None, owner: int) -> None:
        self.owner = owner  # id() of the wrapper (a shallow copy gets its own state)
        # Weak references to the DB-API cursors opened on the current
        # connection: detached when it goes back.
        self.cursors: list[Any] = []
        # The TxCursorWrapper whose result is still on the connection (held until it is closed).
        self.stream: Any = None
        self.guard = guard
        self.token = 0  # this attachment's number (0: none)


# --- Django DatabaseWrapper hooks (wrapt signature) ---------------------------------------------


def connect(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    d = instance.__dict__
    if d.get(PARKED) and instance.connection is None and TX in d:
        return _reattach(instance, d)
    d[CONNECTING] = True
    try:
        result = wrapped(*args, **kwargs)
    finally:
        d.pop(CONNECTING, None)
    _set_mode(instance, d)
    return result


def _set_mode(instance: Any, d: dict[str, Any]) -> None:
    """Decide from the pool just checked out whether this wrapper is in transaction mode."""
    d.pop(PARKED, None)
    fairy = d.get(FAIRY)
    cfg = getattr(getattr(fairy._pool, "autopool_entry", None), "config", None) if fairy is not None else None
    if cfg is not None and getattr(cfg, "pool_mode", None) == TRANSACTION:
        for listener in _mode_listeners:
            listener()
        state = d.get(TX)
        if state is None or state.guard != cfg.session_state_guard or state.owner != id(instance):
            state = d[TX] = _TxState(cfg.session_state_guard, id(instance))
        state.stream = None
        state.token = next(_TOKENS)
    else:
        d.pop(TX, None)


def _reattach(instance: Any, d: dict[str, Any]) -> None:
    """Check a pooled connection out for a parked wrapper, without Django's per-request resets."""
    d[CONNECTING] = True
    try:
        conn = instance.get_new_connection(instance.get_connection_params())
        instance.connection = conn
        del d[PARKED]
        # Django's flag is on (the wrapper was parked in autocommit): make
        # sure the server agrees; free when it does (hooks.set_autocommit).
        instance._set_autocommit(True)
        if d.get(REUSED):
            d.pop(REUSED, None)
        else:
            # A physical connection never set up: what connect() does for it.
            instance.init_connection_state()
            connection_created.send(sender=instance.__class__, connection=instance)
        # Like connect(): a connection the pool handed out is presumed healthy.
        instance.errors_occurred = False
    except BaseException:
        if instance.connection is not None:
            _park(instance, d, d[TX], healthy=False)
        raise
    finally:
        d.pop(CONNECTING, None)
    _set_mode(instance, d)


def get_autocommit(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # A parked wrapper is in autocommit by construction: answering needs no connection.
    if instance.__dict__.get(PARKED) and instance.connection is None:
        return instance.autocommit
    return wrapped(*args, **kwargs)


def set_autocommit(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    result = wrapped(*args, **kwargs)
    d = instance.__dict__
    state = d.get(TX)
    if state is not None and instance.autocommit:
        # The transaction ended (atomic() exit, or a manual one).
        _park_if_idle(instance, d, state)
    return result


def close(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    d = instance.__dict__
    d.pop(PARKED, None)
    state = d.get(TX)
    if state is not None:
        # The connection goes back (or is closed): cursors left over from
        # this request must not reach it once another request holds it.
        state.stream = None
        _detach(state)
    return wrapped(*args, **kwargs)


def create_cursor(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # A statement run between _cursor()'s ensure_connection() and here (e.g.
    # by a patched ensure_connection) may have given the connection back.
    if instance.connection is None and instance.__dict__.get(PARKED):
        with instance.wrap_database_errors:
            instance.connect()  # re-attaches (not ensure_connection(): that may be the patched one)
    return wrapped(*args, **kwargs)


def disable_constraint_checking(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # ``SET foreign_key_checks=0`` is session state: hold the connection until
    # enable_constraint_checking(), so the statements in between (the schema
    # editor's, loaddata's) see it and no other request gets it.
    d = instance.__dict__
    d[PINS] = d.get(PINS, 0) + 1
    try:
        disabled = wrapped(*args, **kwargs)
    except BaseException:
        _unpin(instance, d, healthy=False)  # checks may be off on it: never pooled
        raise
    if disabled:
        d[FK_PINS] = d.get(FK_PINS, 0) + 1
    else:
        _unpin(instance, d)
    return disabled


def enable_constraint_checking(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    d = instance.__dict__
    healthy = False  # checks may still be off if turning them on failed: never pooled
    try:
        result = wrapped(*args, **kwargs)
        healthy = True
        return result
    finally:
        held = d.get(FK_PINS, 0)
        if held:
            if held > 1:
                d[FK_PINS] = held - 1
            else:
                del d[FK_PINS]
            _unpin(instance, d, healthy)


def _unpin(db: Any, d: dict[str, Any], healthy: bool = True) -> None:
    depth = d.get(PINS, 1) - 1
    if depth > 0:
        d[PINS] = depth
        return
    d.pop(PINS, None)
    state = d.get(TX)
    if state is not None:
        _park_if_idle(db, d, state, healthy)


def make_cursor(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    state = instance.__dict__.get(TX)
    if state is None:
        return wrapped(*args, **kwargs)
    return _tx_cursor(TxCursorWrapper, instance, state, args, kwargs)


def make_debug_cursor(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    state = instance.__dict__.get(TX)
    if state is None:
        return wrapped(*args, **kwargs)
    return _tx_cursor(TxCursorDebugWrapper, instance, state, args, kwargs)


def _tx_cursor(cls: type, db: Any, state: _TxState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    cursor = args[0] if args else kwargs["cursor"]
    _track(state, cursor)
    wrapper = cls(cursor, db)
    wrapper._autopool_token = state.token
    return wrapper


def _track(state: _TxState, cursor: Any) -> None:
    cursors = state.cursors
    cursors.append(weakref.ref(_dbapi(cursor)))
    if len(cursors) > 64:
        # A long transaction opens many cursors before the connection goes back.
        cursors[:] = [ref for ref in cursors if ref() is not None]


def _dbapi(cursor: Any) -> Any:
    # Django's MySQL CursorWrapper keeps the DB-API cursor as ``cursor``.
    inner = cursor.__dict__.get("cursor") if hasattr(cursor, "__dict__") else None
    return inner if inner is not None else cursor


# --- parking --------------------------------------------------------------------------------------


def _detach(state: _TxState) -> None:
    """Cut the tracked DB-API cursors off their connection; their buffered rows stay readable."""
    for ref in state.cursors:
        cursor = ref()
        if cursor is not None:
            cursor.connection = None
    state.cursors.clear()


def _park_if_idle(db: Any, d: dict[str, Any], state: _TxState, healthy: bool = True) -> None:
    if (
        db.in_atomic_block
        or not db.autocommit
        or d.get(CONNECTING)
        or d.get(PINS)
        or state.stream is not None
        or db.connection is None
    ):
        return
    status = _server_status(db)
    if status is not None and status & SERVER_STATUS_IN_TRANS:
        return  # a raw BEGIN's transaction: held until a statement ends it
    _park(db, d, state, healthy=healthy)


def _park(db: Any, d: dict[str, Any], state: _TxState, healthy: bool) -> None:
    """Give the connection back (or discard it) and leave the wrapper parked."""
    fairy = d.get(FAIRY)
    conn = db.connection
    if fairy is None or fairy.dbapi_connection is not conn or d.get(CHECKED_OUT_BY) != id(db):
        # Not a checkout of this wrapper (code replaced the connection, or a
        # shallow copy): left to close() as in request mode.
        return
    _detach(state)
    state.stream = None
    state.token = 0
    del d[FAIRY]
    d.pop(CHECKED_OUT_BY, None)
    d.pop(REUSED, None)
    db.connection = None
    d[PARKED] = True
    try:
        if healthy:
            hooks.release(db, fairy)
        else:
            hooks.discard(fairy)
    finally:
        d.pop(hooks.HOLDER, None)


# What a statement left on its connection (_after_statement).
PARK, STREAM, IN_TRANSACTION = 0, 1, 2


def _after_statement(db: Any, cursor: Any) -> int:
    """Whether the connection can go back now: PARK, STREAM (a result still to read from the
    server: held until the cursor is closed) or IN_TRANSACTION (a raw BEGIN / START TRANSACTION
    opened one: held until a statement ends it)."""
    cls = type(_dbapi(cursor.cursor))
    streaming = _STREAMING.get(cls)
    if streaming is None:
        streaming = _STREAMING[cls] = _is_streaming_class(cls)
    if streaming:
        return STREAM
    # PyMySQL keeps its last result on the connection; its status flags do
    # not show a further result of a CALL.
    last = getattr(db.connection, "_result", None)
    if last is not None and getattr(last, "has_next", False):
        return STREAM
    status = _server_status(db)
    if status is None:
        return PARK
    if status & SERVER_MORE_RESULTS_EXIST:
        return STREAM
    if status & SERVER_STATUS_IN_TRANS:
        return IN_TRANSACTION
    return PARK


def _server_status(db: Any) -> int | None:
    """The server status flags of the last reply (no round trip), None if the driver cannot tell."""
    fairy = db.__dict__.get(FAIRY)
    if fairy is None:
        return None
    try:
        status: int | None = fairy._pool.autopool_entry.driver.server_status(db.connection)
    except Exception:  # noqa: BLE001 - unknown status: treated as "cannot tell"
        return None
    return status


_STREAMING: dict[type, bool] = {}  # DB-API cursor class -> whether it streams results (unbuffered)


def _is_streaming_class(cls: type) -> bool:
    names = {c.__name__ for c in cls.__mro__}
    # mysqlclient: CursorUseResultMixIn; PyMySQL: SSCursor (unbuffered).
    return bool(names & {"CursorUseResultMixIn", "SSCursor", "SSDictCursor"})


# --- the session-state guard ----------------------------------------------------------------------

_SESSION_PREFIXES = ("SET ", "USE ", "CREATE TEMPORARY", "LOCK TABLE", "LOCK TABLES")


def _sets_session_state(sql: Any) -> bool:
    """A prefix check on the statement's text (not a parser): cheap enough for every statement."""
    if not isinstance(sql, str):
        return False
    head = sql[:40].lstrip().upper()
    if head.startswith(_SESSION_PREFIXES):
        return not head.startswith(("SET GLOBAL", "SET @@GLOBAL"))
    return "GET_LOCK" in sql or "get_lock" in sql


def _guard(db: Any, state: _TxState, sql: Any) -> None:
    if state.guard is None or not _sets_session_state(sql):
        return
    message = (
        f"{db.alias!r} is in pool_mode='transaction': the session state this statement sets is "
        f"lost when the connection goes back to the pool after it; run it inside "
        f"transaction.atomic() or autopool.pinned() ({str(sql)[:80]!r})"
    )
    if state.guard == "error":
        raise SessionStateError(message)
    logger.warning(message)


# --- cursors --------------------------------------------------------------------------------------


def _statement(cursor: Any, run: Any, args: tuple[Any, ...], sql: Any, multi_result: bool = False) -> Any:
    db = cursor.db
    d = db.__dict__
    state = d.get(TX)
    if state is None:  # the wrapper left transaction mode (reconnected to another pool)
        return run(*args)
    if cursor._autopool_token != state.token or db.connection is None:
        _rebind(cursor, db, d)
        state = d.get(TX)
        if state is None:
            return run(*args)
    will_park = not (
        db.in_atomic_block or not db.autocommit or d.get(CONNECTING) or d.get(PINS) or state.stream is not None
    )
    if will_park and state.guard is not None:
        try:
            _guard(db, state, sql)
        except SessionStateError:
            _park(db, d, state, healthy=True)  # refused before it ran: the connection is clean
            raise
    try:
        result = run(*args)
    except BaseException as exc:
        if will_park and db.connection is not None:
            status = _server_status(db)
            if status is not None and status & SERVER_STATUS_IN_TRANS:
                # A raw BEGIN's transaction is still open: held, as request mode
                # would until the end of the request.
                raise
            clean = isinstance(exc, (IntegrityError, DataError)) and not db.errors_occurred
            _park(db, d, state, healthy=clean)
        raise
    if will_park and db.connection is not None:
        after = STREAM if multi_result else _after_statement(db, cursor)
        if after == PARK:
            _park(db, d, state, healthy=True)
        elif after == STREAM:
            state.stream = cursor
    return result


def _rebind(cursor: Any, db: Any, d: dict[str, Any]) -> None:
    """Give a cursor whose connection went back a DB-API cursor on the wrapper's current one."""
    if db.connection is None:
        db.ensure_connection()
    state = d.get(TX)
    inner = db.create_cursor()
    cursor.cursor = inner
    if state is not None:
        _track(state, inner)
        cursor._autopool_token = state.token


class TxCursorWrapper(django_utils.CursorWrapper):
    """Django's cursor wrapper for a connection in transaction mode."""

    _autopool_token = 0  # the attachment its DB-API cursor belongs to

    def execute(self, sql: Any, params: Any = None) -> Any:
        return _statement(self, super().execute, (sql, params), sql)

    def executemany(self, sql: Any, param_list: Any) -> Any:
        return _statement(self, super().executemany, (sql, param_list), sql)

    def callproc(self, procname: Any, params: Any = None, kparams: Any = None) -> Any:
        # A procedure's reply carries a further result (its status) still to read.
        return _statement(self, super().callproc, (procname, params, kparams), None, multi_result=True)

    def close(self) -> Any:
        try:
            return self.cursor.close()
        finally:
            db = self.db
            d = db.__dict__
            state = d.get(TX)
            if state is not None and state.stream is self:
                state.stream = None
                _park_if_idle(db, d, state)


class TxCursorDebugWrapper(TxCursorWrapper, django_utils.CursorDebugWrapper):
    """``TxCursorWrapper`` that also logs queries (``connection.queries``)."""


# --- pinning --------------------------------------------------------------------------------------


@contextmanager
def pinned(using: str = DEFAULT_DB_ALIAS) -> Iterator[Any]:
    """Hold one server connection for the block, e.g. for session state.

    ``with autopool.pinned("default"):`` every statement of the block runs on
    the same server session (user variables, ``SET SESSION``, temporary
    tables, ``GET_LOCK``, ``LAST_INSERT_ID()``/``FOUND_ROWS()`` in a later
    statement). Nests; a no-op beyond holding the connection in request mode.
    Yields Django's connection for ``using``.
    """
    from django.db import connections

    db = connections[using]
    d = db.__dict__
    d[PINS] = d.get(PINS, 0) + 1
    try:
        db.ensure_connection()
        yield db
    finally:
        _unpin(db, d)


# (DatabaseWrapper attribute, hook): registered by patch.py after its own
# table, so these wrap autopool's hooks. ``connect`` decides the mode; the
# constraint-checking pair may connect from inside their own call, so they
# must already be in place when a wrapper first enters transaction mode.
PATCHES = (
    ("connect", connect),
    ("disable_constraint_checking", disable_constraint_checking),
    ("enable_constraint_checking", enable_constraint_checking),
)
# Called several times per request: applied only once a wrapper enters
# transaction mode (``_set_mode`` runs the listeners first), so a project in
# request mode calls through none of them. Each matters only after a
# connect() in transaction mode, by which time it is applied: Django looks
# each one up after ``ensure_connection()``.
MODE_PATCHES = (
    ("get_autocommit", get_autocommit),
    ("set_autocommit", set_autocommit),
    ("close", close),
    ("create_cursor", create_cursor),
    ("make_cursor", make_cursor),
    ("make_debug_cursor", make_debug_cursor),
)

# patch.py registers the step that applies MODE_PATCHES, so this layer never
# imports the one that installs it. A listener returns at once once applied.
_mode_listeners: list[Callable[[], None]] = []


def on_transaction_mode(listener: Callable[[], None]) -> None:
    """Call ``listener()`` whenever a wrapper enters transaction mode, before its
    ``connect()`` returns (once per listener, however often registered)."""
    if listener not in _mode_listeners:
        _mode_listeners.append(listener)


FAIRY = hooks.FAIRY
CHECKED_OUT_BY = hooks.CHECKED_OUT_BY
REUSED = hooks.REUSED
