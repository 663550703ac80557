"""What autopool needs to know about the DB-API driver behind Django's backend.

Django's MySQL backend imports ``MySQLdb``: that is mysqlclient, or PyMySQL
after ``pymysql.install_as_MySQLdb()``. Each :class:`Driver` answers, without
a round trip where the driver allows it: which SQLAlchemy dialect pings and
resets its connections, whether a connection may be inside a transaction,
which database it is in (a request's ``USE`` must not reach the next one),
whether a result is still unread on it, and how to reset a server session.

The current database is tracked client-side from the server's session
tracking (``session_track_schema``, on by default in MariaDB and MySQL):
every reply to a statement that changed it carries the new name. MariaDB
Connector/C (behind mysqlclient) keeps it in its connection handle; PyMySQL
does not ask for session tracking, so autopool asks for it when it connects
and reads the schema out of the replies that carry one.
"""

from __future__ import annotations

import ctypes
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeAlias

# (sql, args) run through a DB-API cursor.
Statement = tuple[str, list[Any] | None]

logger = logging.getLogger("autopool")

SERVER_STATUS_IN_TRANS = 0x0001
SERVER_STATUS_AUTOCOMMIT = 0x0002
SERVER_MORE_RESULTS_EXIST = 0x0008
SERVER_SESSION_STATE_CHANGED = 0x4000
SESSION_TRACK_SCHEMA = 0x01
CLIENT_SESSION_TRACK = 1 << 23
COM_RESET_CONNECTION = 0x1F


class _Unknown:
    """The driver cannot tell (a missing client library feature): see :meth:`Driver.schema`."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()
# What Driver.schema() returns: the current database, None for none, or UNKNOWN.
Schema = str | None | _Unknown


class Driver:
    name = "unknown"

    def __init__(self, module: Any) -> None:
        self.module = module

    def dialect(self) -> Any:
        raise NotImplementedError

    def server_status(self, conn: Any) -> int | None:
        """The server status flags of the last reply, or None if unknown."""
        return None

    def may_be_in_transaction(self, conn: Any) -> bool:
        """False only when the driver proves no transaction is open."""
        status = self.server_status(conn)
        if status is None:
            return True
        return bool(status & SERVER_STATUS_IN_TRANS) or not status & SERVER_STATUS_AUTOCOMMIT

    def connect_params(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        """The parameters a pooled connection is opened with (what the driver needs added)."""
        return params

    def prepare(self, conn: Any) -> None:
        """Once per new physical connection, before anyone uses it."""
        self._note_home(conn)

    def _note_home(self, conn: Any) -> None:
        # The database the connection starts in: NAME, or one that OPTIONS
        # (``db``, a ``read_default_file``'s ``database``) chose.
        conn.__dict__[HOME_SCHEMA_ATTR] = self.schema(conn)

    def home_schema(self, conn: Any) -> Schema:
        """The database the connection was opened in (UNKNOWN if not tracked)."""
        home: Schema = conn.__dict__.get(HOME_SCHEMA_ATTR, UNKNOWN)
        return home

    def schema(self, conn: Any) -> Schema:
        """The connection's current database as the client tracked it, without a round trip.

        None: no database selected (or the current one was dropped); UNKNOWN:
        this driver or client library cannot tell.
        """
        return UNKNOWN

    def unread_result(self, conn: Any) -> bool | None:
        """True when a result (or a further result of a multi-result reply) is still unread.

        Such a connection cannot take the next user's command (mysqlclient
        fails it with 2014 "Commands out of sync"; PyMySQL silently reads the
        rest of the stream first). None: this driver cannot tell.
        """
        return None

    def forget_unread(self, conn: Any) -> None:
        """Before closing a connection with an unread result: nothing is read from it any more."""

    def reset_session(self, conn: Any, setup: Sequence[Statement] = ()) -> None:
        """COM_RESET_CONNECTION, then re-run the driver's connect-time ``setup``.

        The reset returns every session variable to its global value, and the
        server's character set handling along with it: MariaDB 10.11 reports
        the handshake character set afterwards but decodes as the session did
        before the reset (a ``SET NAMES latin1`` turns the next user's utf8mb4
        into mojibake), and a ``collation``, ``sql_mode`` or ``init_command``
        from ``OPTIONS`` is gone. ``setup`` (:meth:`session_setup`) restores
        them: one round trip for the reset, one per statement. It includes
        the role the session had when it connected (``SET ROLE``): MariaDB
        10.11's reset keeps the current role.
        """
        self._send_reset(conn)
        cursor = conn.cursor()
        try:
            for sql, args in setup:
                cursor.execute(sql, args)
                while cursor.nextset():
                    pass
        finally:
            cursor.close()

    def _send_reset(self, conn: Any) -> None:
        raise NotImplementedError

    def session_setup(self, conn: Any, conn_params: Mapping[str, Any]) -> tuple[Statement, ...]:
        """The statements that redo what the driver set up when it connected.

        Called on a fresh connection only (one round trip: its login role).
        """
        charset, collation = self.character_set(conn, conn_params)
        names = f"SET NAMES {charset}" + (f" COLLATE {collation}" if collation else "") if charset else None
        sql_mode = conn_params.get("sql_mode")
        init_command = conn_params.get("init_command")
        steps: dict[str, Statement | None] = {
            "names": (names, None) if names else None,
            "sql_mode": ("SET SESSION sql_mode = %s", [sql_mode]) if sql_mode is not None else None,
            "init_command": (init_command, None) if init_command else None,
        }
        setup = tuple(step for step in (steps[name] for name in self.SETUP_ORDER) if step is not None)
        return setup + (self._role_statement(conn),)

    @staticmethod
    def _role_statement(conn: Any) -> Statement:
        # The role the account starts with (SET DEFAULT ROLE), else none.
        cursor = conn.cursor()
        try:
            cursor.execute("SELECT CURRENT_ROLE()")
            row = cursor.fetchone()
        finally:
            cursor.close()
        role = row[0] if row else None
        if isinstance(role, (bytes, bytearray)):
            role = role.decode("utf-8", "surrogateescape")
        if not role:
            return ("SET ROLE NONE", None)
        return ("SET ROLE `" + role.replace("`", "``") + "`", None)

    # The order in which the driver runs them when it connects.
    SETUP_ORDER: tuple[str, ...] = ("names", "sql_mode", "init_command")

    def character_set(self, conn: Any, conn_params: Mapping[str, Any]) -> tuple[str | None, str | None]:
        return conn_params.get("charset"), conn_params.get("collation")

    def is_open(self, conn: Any) -> bool:
        return bool(getattr(conn, "open", True))

    def fileno(self, conn: Any) -> int | None:
        """The connection's socket descriptor, or None if it cannot be had."""
        try:
            fd: int = conn.fileno()
        except Exception:  # noqa: BLE001 - no descriptor: nothing to poll
            return None
        return fd

    def pending_input(self, conn: Any) -> bool:
        """True when bytes wait on an idle connection's socket (a non-blocking poll, < 1 us).

        On a connection handed back to the pool that is a reply nobody read
        (the next user would read it as its own) or the server's goodbye (the
        session was killed or timed out): either way it must not be pooled.
        Only the socket is seen, not bytes the client already buffered.
        """
        fd = self.fileno(conn)
        if fd is None:
            return False
        cached = conn.__dict__.get(POLLER_ATTR)
        if cached is None or cached[0] != fd:  # a reconnect in place changes the descriptor
            cached = conn.__dict__[POLLER_ATTR] = (fd, _poller(fd))
        ready: Callable[[], bool] = cached[1]
        return ready()


POLLER_ATTR = "_autopool_poller"  # (descriptor, its poll function) for Driver.pending_input
_POLLIN = 1  # POLLIN; errors and hang-ups are reported whatever is asked


class _PollFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


def _libc_poll() -> Any:
    # poll(2) with a zero timeout never blocks, so it may keep the GIL: called
    # through PyDLL it does. select.poll releases and retakes it, which in a
    # busy threaded server (uvicorn's request threads) is a thread switch on
    # every return.
    try:
        poll = ctypes.PyDLL(None, use_errno=True).poll
    except (AttributeError, OSError):
        return None
    poll.restype = ctypes.c_int
    poll.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int]
    return poll


_LIBC_POLL = _libc_poll()


def _poller(fd: int) -> Callable[[], bool]:
    """A function telling, without waiting, whether ``fd`` is readable (or failed)."""
    fallback = _original_poll()()
    fallback.register(fd, _POLLIN)
    libc_poll = _LIBC_POLL
    if libc_poll is None:
        return lambda: bool(fallback.poll(0))
    # poll(2) rewrites revents on every call: the struct is set up once.
    pollfd = _PollFd(fd, _POLLIN, 0)
    address = ctypes.addressof(pollfd)

    def ready() -> bool:
        n: int = libc_poll(address, 1, 0)
        if n < 0:  # EINTR or a bad descriptor: ask select.poll, which raises or retries
            return bool(fallback.poll(0))
        return n > 0

    ready.pollfd = pollfd  # type: ignore[attr-defined]  # the struct lives as long as the function
    return ready


def _original_poll() -> Any:
    # gevent's monkey patching replaces select.poll with one that waits on the hub: the
    # thread's own poll(0) answers at once and never switches greenlets.
    import select

    try:
        from gevent import monkey
    except ImportError:
        return select.poll
    if monkey.is_module_patched("select"):
        return monkey.get_original("select", "poll")
    return select.poll


class PyMySQLDriver(Driver):
    name = "pymysql"

    def dialect(self) -> Any:
        from sqlalchemy.dialects.mysql.pymysql import MySQLDialect_pymysql

        return MySQLDialect_pymysql(dbapi=self.module)

    def server_status(self, conn: Any) -> int | None:
        return getattr(conn, "server_status", None)

    def connect_params(self, params: Mapping[str, Any]) -> Mapping[str, Any]:
        # Ask for session tracking: the server then names the new database in
        # the reply to a USE (or COM_INIT_DB). Nothing else changes for
        # PyMySQL but the bytes it keeps as the reply's message.
        flags = params.get("client_flag") or 0
        if flags & CLIENT_SESSION_TRACK:
            return params
        return dict(params, client_flag=flags | CLIENT_SESSION_TRACK)

    def prepare(self, conn: Any) -> None:
        tracked = bool(
            getattr(conn, "server_capabilities", 0) & CLIENT_SESSION_TRACK
            and getattr(conn, "client_flag", 0) & CLIENT_SESSION_TRACK
        )
        conn.__dict__[IN_COMMAND_ATTR] = None
        if not tracked:
            # The server does not track sessions: schema() stays UNKNOWN.
            conn.__class__ = _guarded_class(type(conn))
            return
        db = conn.db
        if isinstance(db, (bytes, bytearray)):
            db = bytes(db).decode(getattr(conn, "encoding", None) or "utf-8", "surrogateescape")
        conn.__dict__[SCHEMA_ATTR] = db or None
        conn.__class__ = _schema_tracking_class(_guarded_class(type(conn)))
        self._note_home(conn)

    def schema(self, conn: Any) -> Schema:
        schema: Schema = conn.__dict__.get(SCHEMA_ATTR, UNKNOWN)
        return schema

    def unread_result(self, conn: Any) -> bool | None:
        # A buffered further result (has_next) is read by PyMySQL itself
        # before the next command; a stream left open would be read to its
        # end first (with a warning), however long it is.
        result = getattr(conn, "_result", None)
        return result is not None and bool(result.unbuffered_active)

    def forget_unread(self, conn: Any) -> None:
        # The connection is about to be closed: the cursor still holding the
        # stream must not try to read the rest of it from a closed socket
        # when it is closed or collected (an exception nobody can catch).
        result = getattr(conn, "_result", None)
        if result is not None:
            result.unbuffered_active = False
            conn._result = None

    def _send_reset(self, conn: Any) -> None:
        conn._execute_command(COM_RESET_CONNECTION, b"")
        conn._read_ok_packet()

    def character_set(self, conn: Any, conn_params: Mapping[str, Any]) -> tuple[str | None, str | None]:
        return getattr(conn, "charset", None), getattr(conn, "collation", None)

    def fileno(self, conn: Any) -> int | None:
        sock = getattr(conn, "_sock", None)
        return None if sock is None else sock.fileno()


SCHEMA_ATTR = "_autopool_schema"  # PyMySQL: the current database, from session tracking
HOME_SCHEMA_ATTR = "_autopool_home_schema"  # the database a connection was opened in


def tracked_schema(message: bytes | None) -> bytes | None:
    """The schema named in an OK packet's session state, or None if it names none.

    ``message``: what follows the status and warning count in an OK packet
    whose status has SERVER_SESSION_STATE_CHANGED: the info string, then the
    session state changes (length-encoded, each a type byte and a
    length-encoded payload; SESSION_TRACK_SCHEMA's payload is the name as a
    length-encoded string).
    """
    if not message:
        return None
    try:
        pos = 0
        length, pos = _lenenc_int(message, pos)
        pos += length  # the info string
        total, pos = _lenenc_int(message, pos)
        end = pos + total
        found = None
        while pos < end:
            kind = message[pos]
            size, pos = _lenenc_int(message, pos + 1)
            if kind == SESSION_TRACK_SCHEMA:
                name_length, start = _lenenc_int(message, pos)
                found = bytes(message[start : start + name_length])
            pos += size
        return found
    except IndexError:
        return None


def _lenenc_int(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if width is None:
        raise IndexError("not a length")
    return int.from_bytes(data[pos + 1 : pos + 1 + width], "little"), pos + 1 + width


IN_COMMAND_ATTR = "_autopool_in_command"  # PyMySQL: the greenlet or thread inside a command, else None

try:
    from greenlet import getcurrent as _current
except ImportError:  # no greenlet: threads are the only concurrency
    from threading import current_thread as _current  # one object per thread: compared with `is`


class ConcurrentUseError(RuntimeError):
    """A PyMySQL connection was used by a second thread while a first one was inside a command.

    Raised to the second one, before its command is sent; the connection is
    closed so the first one's pending read fails (2013, lost connection)
    instead of completing. Under gevent, :class:`gevent.exceptions.ConcurrentObjectUseError`
    is raised instead, as gevent and autopool's cooperative mysqlclient do.
    """


def _concurrent_use_error(conn: Any) -> BaseException:
    message = (
        "this PyMySQL connection is already in use by another greenlet or thread (a connection "
        "must not be shared); it was closed, both uses fail"
    )
    from .gevent import socket_patched

    if socket_patched():
        from gevent.exceptions import ConcurrentObjectUseError

        error: BaseException = ConcurrentObjectUseError(message)
        return error
    return ConcurrentUseError(message)


def _abort(conn: Any) -> None:
    """Close a connection another greenlet or thread is inside of, so that its command fails.

    PyMySQL's own close cannot: the socket's buffered reader is busy in the
    other one's read (closing it raises "reentrant call" under gevent, waits
    for that read under threads), and a socket with a reader still open is
    not really closed. ``shutdown()`` ends the other one's wait at once: it
    reads end of stream and fails with 2013 (lost connection); it closes the
    descriptor when it drops the reader. ``open`` is False from here on, so
    the pool never takes the connection back.
    """
    sock = conn._sock
    if sock is None:
        return
    conn._sock = None
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already disconnected: the other one's read fails anyway
    sock.close()  # deferred by the socket until the other one drops the reader


# Keyed by PyMySQL's (untyped) Connection class and its subclasses.
_guarded_classes: dict[type[Any], type[Any]] = {}


def _guarded_class(base: type[Any]) -> type[Any]:
    """A subclass of PyMySQL's Connection that refuses a second concurrent user.

    A connection is one protocol stream: a command sent while another
    greenlet or thread waits for the reply to its own is answered after it,
    and the later reply is left for whoever reads next (the next user of the
    pool reads the previous request's result). PyMySQL does not notice.
    Each method that talks to the server notes who is inside it (one
    attribute set and reset per command); a second caller closes the
    connection and gets an error before anything is sent.
    """
    cls = _guarded_classes.get(base)
    if cls is not None:
        return cls

    def guard(name: str) -> Any:
        method = getattr(base, name)

        def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
            me = _current()
            owner = self._autopool_in_command
            if owner is not None and owner is not me:
                _abort(self)
                raise _concurrent_use_error(self)
            self._autopool_in_command = me
            try:
                return method(self, *args, **kwargs)
            finally:
                if owner is None:  # not a nested call (query() runs next_result())
                    self._autopool_in_command = None

        guarded.__name__ = guarded.__qualname__ = name
        guarded.__doc__ = method.__doc__
        return guarded

    def _execute_command(self: Any, command: int, sql: Any) -> Any:
        # Every command passes here, also those sent by methods not guarded above.
        owner = self._autopool_in_command
        if owner is not None and owner is not _current():
            _abort(self)
            raise _concurrent_use_error(self)
        return base._execute_command(self, command, sql)

    def close(self: Any) -> None:
        owner = self._autopool_in_command
        if owner is not None and owner is not _current():
            # Closed from elsewhere while a command waits: that command fails.
            self._closed = True
            _abort(self)
            return
        base.close(self)

    names = [name for name in _GUARDED if callable(getattr(base, name, None))]
    namespace = {name: guard(name) for name in names}
    namespace.update(
        _execute_command=_execute_command, close=close, _autopool_in_command=None, __module__=base.__module__
    )
    cls = _guarded_classes[base] = type(base.__name__, (base,), namespace)
    return cls


# PyMySQL Connection methods that send a command and read its reply.
_GUARDED = (
    "query",
    "next_result",
    "ping",
    "commit",
    "rollback",
    "begin",
    "select_db",
    "autocommit",
    "kill",
    "show_warnings",
    "set_character_set",
    "set_charset",
)


_tracking_classes: dict[type[Any], type[Any]] = {}


def _schema_tracking_class(base: type[Any]) -> type[Any]:
    """A subclass of PyMySQL's Connection that notes the schema named in its replies.

    Only replies with SERVER_SESSION_STATE_CHANGED are parsed (a USE, a
    COM_INIT_DB, or a tracked variable such as autocommit changing); every
    other reply costs one bit test.
    """
    cls = _tracking_classes.get(base)
    if cls is not None:
        return cls

    def _note(conn: Any, message: bytes | None) -> None:
        name = tracked_schema(message)
        if name is not None:
            conn.__dict__[SCHEMA_ATTR] = name.decode(conn.encoding or "utf-8", "surrogateescape") or None

    class SchemaTracking(base):
        def _read_query_result(self, unbuffered: bool = False) -> Any:
            rows = super()._read_query_result(unbuffered=unbuffered)
            result = self._result
            if result is not None and (result.server_status or 0) & SERVER_SESSION_STATE_CHANGED:
                _note(self, result.message)
            return rows

        def _read_ok_packet(self) -> Any:
            ok = super()._read_ok_packet()
            if ok.server_status & SERVER_SESSION_STATE_CHANGED:
                _note(self, ok.message)
            return ok

    SchemaTracking.__name__ = SchemaTracking.__qualname__ = base.__name__
    SchemaTracking.__module__ = base.__module__
    cls = _tracking_classes[base] = SchemaTracking
    return cls


class _NET(ctypes.Structure):
    # NET in mariadb_com.h (Connector/C 3.x)
    _fields_ = [
        ("pvio", ctypes.c_void_p),
        ("buff", ctypes.c_void_p),
        ("buff_end", ctypes.c_void_p),
        ("write_pos", ctypes.c_void_p),
        ("read_pos", ctypes.c_void_p),
        ("fd", ctypes.c_int),
        ("remain_in_buf", ctypes.c_ulong),
        ("length", ctypes.c_ulong),
        ("buf_length", ctypes.c_ulong),
        ("where_b", ctypes.c_ulong),
        ("max_packet", ctypes.c_ulong),
        ("max_packet_size", ctypes.c_ulong),
        ("pkt_nr", ctypes.c_uint),
        ("compress_pkt_nr", ctypes.c_uint),
        ("write_timeout", ctypes.c_uint),
        ("read_timeout", ctypes.c_uint),
        ("retry_count", ctypes.c_uint),
        ("fcntl", ctypes.c_int),
        ("return_status", ctypes.c_void_p),
        ("reading_or_writing", ctypes.c_ubyte),
        ("save_char", ctypes.c_char),
        ("unused_1", ctypes.c_char),
        ("unused_2", ctypes.c_char),
        ("compress", ctypes.c_char),
        ("unused_3", ctypes.c_char),
        ("unused_4", ctypes.c_void_p),
        ("last_errno", ctypes.c_uint),
        ("error", ctypes.c_ubyte),
        ("unused_5", ctypes.c_char),
        ("unused_6", ctypes.c_char),
        ("last_error", ctypes.c_char * 512),
        ("sqlstate", ctypes.c_char * 6),
        ("extension", ctypes.c_void_p),
    ]


class _MemRoot(ctypes.Structure):
    _fields_ = [
        ("free", ctypes.c_void_p),
        ("used", ctypes.c_void_p),
        ("pre_alloc", ctypes.c_void_p),
        ("min_malloc", ctypes.c_size_t),
        ("block_size", ctypes.c_size_t),
        ("block_num", ctypes.c_uint),
        ("first_block_usage", ctypes.c_uint),
        ("error_handler", ctypes.c_void_p),
    ]


# A field of a structure made of scalars and pointers only (a string: ctypes'
# classes are not subscriptable at run time).
_Scalar: TypeAlias = "tuple[str, type[ctypes._SimpleCData[Any]]]"


def _scalars(ctype: type[ctypes._SimpleCData[Any]], *names: str) -> list[_Scalar]:
    """Consecutive fields of one C type."""
    return [(name, ctype) for name in names]


class _Options(ctypes.Structure):
    # struct st_mysql_options in mysql.h
    _fields_: ClassVar[Sequence[_Scalar]] = (
        _scalars(ctypes.c_uint, "connect_timeout", "read_timeout", "write_timeout", "port", "protocol")
        + _scalars(ctypes.c_ulong, "client_flag")
        + _scalars(
            ctypes.c_void_p,
            "host",
            "user",
            "password",
            "unix_socket",
            "db",
            "init_command",
            "my_cnf_file",
            "my_cnf_group",
            "charset_dir",
            "charset_name",
            "ssl_key",
            "ssl_cert",
            "ssl_ca",
            "ssl_capath",
            "ssl_cipher",
            "shared_memory_base_name",
        )
        + _scalars(ctypes.c_ulong, "max_allowed_packet")
        + _scalars(ctypes.c_char, "use_ssl", "compress", "named_pipe", "reconnect", "unused_1", "unused_2", "unused_3")
        + _scalars(ctypes.c_int, "methods_to_use")
        + _scalars(ctypes.c_void_p, "bind_address")
        + _scalars(ctypes.c_char, "secure_auth", "report_data_truncation")
        + _scalars(
            ctypes.c_void_p,
            "local_infile_init",
            "local_infile_read",
            "local_infile_end",
            "local_infile_error",
            "local_infile_userdata",
            "extension",
        )
    )


class _MYSQL(ctypes.Structure):
    """The head of MariaDB Connector/C's MYSQL handle, up to ``status`` (mysql.h, libmariadb.so.3).

    ``status`` is the client's own state (MYSQL_STATUS_READY = 0; USE_RESULT
    while a streamed result is unread). No function returns it, so it is read
    from the handle; :meth:`_Native.verify` checks this layout against values
    the library returns before trusting it.
    """

    _fields_ = (
        [("net", _NET), ("unused_0", ctypes.c_void_p)]
        + [
            (n, ctypes.c_void_p)
            for n in (
                "host",
                "user",
                "passwd",
                "unix_socket",
                "server_version",
                "host_info",
                "info",
                "db",
                "charset",
                "fields",
            )
        ]
        + [
            ("field_alloc", _MemRoot),
            ("affected_rows", ctypes.c_ulonglong),
            ("insert_id", ctypes.c_ulonglong),
            ("extra_info", ctypes.c_ulonglong),
            ("thread_id", ctypes.c_ulong),
            ("packet_length", ctypes.c_ulong),
            ("port", ctypes.c_uint),
            ("client_flag", ctypes.c_ulong),
            ("server_capabilities", ctypes.c_ulong),
        ]
        + [
            (n, ctypes.c_uint)
            for n in ("protocol_version", "field_count", "server_status", "server_language", "warning_count")
        ]
        + [("options", _Options), ("status", ctypes.c_int)]
    )


MYSQL_STATUS_READY = 0

# What _Native keeps on a connection: the handle, the status buffer and its
# address, the schema buffer and its address, the handle seen as _MYSQL.
_NativeView = tuple[int, ctypes.c_uint, int, ctypes.c_char_p, int, _MYSQL]


class _Native:
    """ctypes access to mysqlclient's MYSQL handle (MariaDB Connector/C).

    mysqlclient exposes neither the server status flags, nor the current
    database the library tracks, nor whether a streamed result is unread,
    nor mysql_reset_connection(); the C library behind it has them all, and
    ``_get_native_connection()`` hands out the handle for exactly this kind
    of use. Checked once against values the driver itself returns; any
    mismatch or missing symbol turns the feature off (autopool then rolls
    back on every return instead of only when needed, and cannot see a
    ``USE`` or an unread result).
    """

    # enum mariadb_value in mysql.h (Connector/C 3.x)
    MARIADB_CONNECTION_SCHEMA = 15
    MARIADB_CONNECTION_SERVER_STATUS = 30

    def __init__(self, extension_path: str) -> None:
        # OSError (no library) or AttributeError (a function missing): the
        # driver has no _Native.
        lib = ctypes.CDLL(extension_path)
        # mariadb_get_infov() only reads the handle's memory: called through
        # PyDLL it keeps the GIL. Through CDLL each call would release and
        # retake it, a thread switch in a busy threaded server (uvicorn's
        # request threads), and a return reads it three times.
        get_infov = ctypes.PyDLL(extension_path).mariadb_get_infov
        get_infov.restype = ctypes.c_ubyte
        get_infov.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        reset = lib.mysql_reset_connection
        reset.restype = ctypes.c_int
        reset.argtypes = [ctypes.c_void_p]
        capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
        capsule_pointer.restype = ctypes.c_void_p
        capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        self._capsule_pointer = capsule_pointer
        # mariadb_get_infov(handle, value, out) and mysql_reset_connection(handle).
        self.get_infov: Callable[[int, int, int], int] = get_infov
        self.reset: Callable[[int], int] = reset
        self.verified = False
        self.readable = True  # the server status can be read (until verify() finds otherwise)
        self.layout_ok = False  # _MYSQL matches the library: the client status is readable

    def handle(self, conn: Any) -> int:
        return self._native_of(conn)[0]

    def _native_of(self, conn: Any) -> _NativeView:
        # Stable for the life of the connection, so built once and kept on
        # it; they are read on every return.
        native: _NativeView | None = conn.__dict__.get("_autopool_native")
        if native is None:
            handle: int = self._capsule_pointer(conn._get_native_connection(), b"_mysql.connection.native_connection")
            status = ctypes.c_uint(0)
            schema = ctypes.c_char_p()
            native = conn.__dict__["_autopool_native"] = (
                handle,
                status,
                ctypes.addressof(status),
                schema,
                ctypes.addressof(schema),
                _MYSQL.from_address(handle),
            )
        return native

    def status(self, conn: Any) -> int | None:
        native = self._native_of(conn)
        if self.get_infov(native[0], self.MARIADB_CONNECTION_SERVER_STATUS, native[2]):
            return None
        status: int = native[1].value
        return status

    def schema(self, conn: Any) -> Schema:
        native = self._native_of(conn)
        if self.get_infov(native[0], self.MARIADB_CONNECTION_SCHEMA, native[4]):
            return UNKNOWN
        name = native[3].value
        return name.decode("utf-8", "surrogateescape") if name else None

    def client_busy(self, conn: Any) -> bool | None:
        """True when the library waits for the caller to read a result (mysql->status)."""
        if not self.layout_ok:
            return None
        status: int = self._native_of(conn)[5].status
        return status != MYSQL_STATUS_READY

    def verify(self, conn: Any) -> bool:
        try:
            status = self.status(conn)
        except Exception:  # noqa: BLE001 - any failure means "not available"
            status = None
        ok = (
            status is not None
            and status < 1 << 16
            and bool(status & SERVER_STATUS_AUTOCOMMIT) == bool(conn.get_autocommit())
        )
        if status is None or not ok:
            logger.info("mysqlclient server status not readable; rolling back on every return")
            self.readable = False
        else:
            self.layout_ok = self._layout_matches(conn, status)
            if not self.layout_ok:
                logger.info(
                    "MariaDB Connector/C's MYSQL layout is not the one autopool knows: an unread "
                    "streamed result is not detected on return"
                )
        self.verified = True
        return ok

    def _layout_matches(self, conn: Any, status: int) -> bool:
        # Fields on both sides of the options block, compared with what the
        # library and the driver report: a different layout fails them.
        try:
            view = self._native_of(conn)[5]
            schema = self._native_of(conn)[3]
            self.get_infov(self.handle(conn), self.MARIADB_CONNECTION_SCHEMA, self._native_of(conn)[4])
            matches: bool = (
                view.thread_id == conn.thread_id()
                and view.server_status == status
                and view.db == ctypes.cast(schema, ctypes.c_void_p).value
                and 0 <= view.status <= 8  # enum mysql_status
            )
            return matches
        except Exception:  # noqa: BLE001 - any failure means "not available"
            return False


class MySQLclientDriver(Driver):
    name = "mysqlclient"

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        self._native: _Native | None = None
        try:
            self._native = _Native(module._mysql.__file__)
        except Exception:  # noqa: BLE001
            self._native = None

    def dialect(self) -> Any:
        from sqlalchemy.dialects.mysql.mysqldb import MySQLDialect_mysqldb

        return MySQLDialect_mysqldb(dbapi=self.module)

    def _ready_native(self, conn: Any) -> _Native | None:
        native = self._native
        if native is None or not native.readable:
            return None
        if not native.verified and not native.verify(conn):
            return None
        return native

    def server_status(self, conn: Any) -> int | None:
        native = self._ready_native(conn)
        return None if native is None else native.status(conn)

    def schema(self, conn: Any) -> Schema:
        native = self._ready_native(conn)
        return UNKNOWN if native is None else native.schema(conn)

    def unread_result(self, conn: Any) -> bool | None:
        native = self._ready_native(conn)
        if native is None:
            return None
        busy = native.client_busy(conn)
        status = native.status(conn)
        more = status is not None and bool(status & SERVER_MORE_RESULTS_EXIST)
        if busy is None:
            return True if more else None
        return busy or more

    # mysqlclient runs init_command inside mysql_real_connect(), then sets
    # the character set and sql_mode.
    SETUP_ORDER = ("init_command", "names", "sql_mode")

    def character_set(self, conn: Any, conn_params: Mapping[str, Any]) -> tuple[str | None, str | None]:
        charset = conn_params.get("charset")
        if not charset:
            try:
                charset = conn.character_set_name()
            except Exception:  # noqa: BLE001 - leave the server's choice alone
                charset = None
        return charset, conn_params.get("collation")

    def _send_reset(self, conn: Any) -> None:
        native = self._native
        if native is not None:
            if native.reset(native.handle(conn)) == 0:
                return
            raise self.module.OperationalError(conn.errno(), conn.error())
        raise self.module.NotSupportedError("reset_session needs MariaDB Connector/C's mysql_reset_connection")


_drivers: dict[int, Driver] = {}


def for_module(module: Any) -> Driver:
    """The driver object for Django's ``Database`` module (cached)."""
    driver = _drivers.get(id(module))
    if driver is None:
        if module.__name__.startswith("pymysql") or getattr(module, "__name__", "") == "pymysql":
            driver = PyMySQLDriver(module)
        elif hasattr(module, "_mysql"):
            driver = MySQLclientDriver(module)
        else:
            driver = PyMySQLDriver(module)
        _drivers[id(module)] = driver
    return driver
