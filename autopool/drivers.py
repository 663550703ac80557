"""What autopool needs to know about the DB-API driver behind Django's backend.

Django's MySQL backend imports ``MySQLdb``: that is mysqlclient, or PyMySQL
after ``pymysql.install_as_MySQLdb()``. Each :class:`Driver` answers three
questions without a round trip where the driver allows it: which SQLAlchemy
dialect pings and resets its connections, whether a connection may be inside
a transaction, and how to reset a server session.
"""
from __future__ import annotations

import ctypes
import logging
from typing import Any, List, Mapping, Optional, Sequence, Tuple

# (sql, args) run through a DB-API cursor.
Statement = Tuple[str, Optional[List[Any]]]

logger = logging.getLogger("autopool")

SERVER_STATUS_IN_TRANS = 0x0001
SERVER_STATUS_AUTOCOMMIT = 0x0002
COM_RESET_CONNECTION = 0x1F


class Driver:
    name = "unknown"

    def __init__(self, module: Any) -> None:
        self.module = module

    def dialect(self) -> Any:
        raise NotImplementedError

    def server_status(self, conn: Any) -> Optional[int]:
        """The server status flags of the last reply, or None if unknown."""
        return None

    def may_be_in_transaction(self, conn: Any) -> bool:
        """False only when the driver proves no transaction is open."""
        status = self.server_status(conn)
        if status is None:
            return True
        return bool(status & SERVER_STATUS_IN_TRANS) or not status & SERVER_STATUS_AUTOCOMMIT

    def reset_session(self, conn: Any, setup: Sequence[Statement] = ()) -> None:
        """COM_RESET_CONNECTION, then re-run the driver's connect-time ``setup``.

        The reset returns every session variable to its global value, and the
        server's character set handling along with it: MariaDB 10.11 reports
        the handshake character set afterwards but decodes as the session did
        before the reset (a ``SET NAMES latin1`` turns the next user's utf8mb4
        into mojibake), and a ``collation``, ``sql_mode`` or ``init_command``
        from ``OPTIONS`` is gone. ``setup`` (:meth:`session_setup`) restores
        them: one round trip for the reset, one per statement.
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

    def session_setup(self, conn: Any, conn_params: Mapping[str, Any]) -> Tuple[Statement, ...]:
        """The statements that redo what the driver set up when it connected."""
        charset, collation = self.character_set(conn, conn_params)
        names = f"SET NAMES {charset}" + (f" COLLATE {collation}" if collation else "") if charset else None
        sql_mode = conn_params.get("sql_mode")
        init_command = conn_params.get("init_command")
        steps = {
            "names": (names, None) if names else None,
            "sql_mode": ("SET SESSION sql_mode = %s", [sql_mode]) if sql_mode is not None else None,
            "init_command": (init_command, None) if init_command else None,
        }
        return tuple(steps[name] for name in self.SETUP_ORDER if steps[name] is not None)

    # The order in which the driver runs them when it connects.
    SETUP_ORDER: Tuple[str, ...] = ("names", "sql_mode", "init_command")

    def character_set(self, conn: Any, conn_params: Mapping[str, Any]) -> Tuple[Optional[str], Optional[str]]:
        return conn_params.get("charset"), conn_params.get("collation")

    def is_open(self, conn: Any) -> bool:
        return bool(getattr(conn, "open", True))


class PyMySQLDriver(Driver):
    name = "pymysql"

    def dialect(self) -> Any:
        from sqlalchemy.dialects.mysql.pymysql import MySQLDialect_pymysql

        return MySQLDialect_pymysql(dbapi=self.module)

    def server_status(self, conn: Any) -> Optional[int]:
        return getattr(conn, "server_status", None)

    def _send_reset(self, conn: Any) -> None:
        conn._execute_command(COM_RESET_CONNECTION, b"")
        conn._read_ok_packet()

    def character_set(self, conn: Any, conn_params: Mapping[str, Any]) -> Tuple[Optional[str], Optional[str]]:
        return getattr(conn, "charset", None), getattr(conn, "collation", None)


class _Native:
    """ctypes access to mysqlclient's MYSQL handle (MariaDB Connector/C).

    mysqlclient exposes neither the server status flags nor
    mysql_reset_connection(); the C library behind it has both, and
    ``_get_native_connection()`` hands out the handle for exactly this kind
    of use. Checked once against the driver's own autocommit flag; any
    mismatch or missing symbol turns the feature off (autopool then rolls
    back on every return instead of only when needed).
    """

    # enum mariadb_value in mysql.h (Connector/C 3.x)
    MARIADB_CONNECTION_SERVER_STATUS = 30

    def __init__(self, extension_path: str) -> None:
        self.get_infov = self.reset = None
        try:
            lib = ctypes.CDLL(extension_path)
            get_infov = lib.mariadb_get_infov
            get_infov.restype = ctypes.c_ubyte
            get_infov.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
            reset = lib.mysql_reset_connection
            reset.restype = ctypes.c_int
            reset.argtypes = [ctypes.c_void_p]
        except (OSError, AttributeError):
            return
        capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
        capsule_pointer.restype = ctypes.c_void_p
        capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        self._capsule_pointer = capsule_pointer
        self.get_infov, self.reset = get_infov, reset
        self.verified = False

    def handle(self, conn: Any) -> int:
        return self._native_of(conn)[0]

    def _native_of(self, conn: Any) -> Tuple[int, Any, int]:
        # (handle, status buffer, its address): stable for the life of the
        # connection, so fetched once and kept on it; the status is read on
        # every return.
        native = conn.__dict__.get("_autopool_native")
        if native is None:
            handle = self._capsule_pointer(conn._get_native_connection(), b"_mysql.connection.native_connection")
            buffer = ctypes.c_uint(0)
            native = conn.__dict__["_autopool_native"] = (handle, buffer, ctypes.addressof(buffer))
        return native

    def status(self, conn: Any) -> Optional[int]:
        handle, buffer, address = self._native_of(conn)
        if self.get_infov(handle, self.MARIADB_CONNECTION_SERVER_STATUS, address):
            return None
        return buffer.value

    def verify(self, conn: Any) -> bool:
        try:
            status = self.status(conn)
        except Exception:  # noqa: BLE001 - any failure means "not available"
            status = None
        ok = status is not None and status < 1 << 16 and \
            bool(status & SERVER_STATUS_AUTOCOMMIT) == bool(conn.get_autocommit())
        if not ok:
            logger.info("mysqlclient server status not readable; rolling back on every return")
            self.get_infov = None
        self.verified = True
        return ok


class MySQLclientDriver(Driver):
    name = "mysqlclient"

    def __init__(self, module: Any) -> None:
        super().__init__(module)
        self._native: Optional[_Native] = None
        try:
            self._native = _Native(module._mysql.__file__)
        except Exception:  # noqa: BLE001
            self._native = None

    def dialect(self) -> Any:
        from sqlalchemy.dialects.mysql.mysqldb import MySQLDialect_mysqldb

        return MySQLDialect_mysqldb(dbapi=self.module)

    def server_status(self, conn: Any) -> Optional[int]:
        native = self._native
        if native is None or native.get_infov is None:
            return None
        if not native.verified and not native.verify(conn):
            return None
        return native.status(conn)

    # mysqlclient runs init_command inside mysql_real_connect(), then sets
    # the character set and sql_mode.
    SETUP_ORDER = ("init_command", "names", "sql_mode")

    def character_set(self, conn: Any, conn_params: Mapping[str, Any]) -> Tuple[Optional[str], Optional[str]]:
        charset = conn_params.get("charset")
        if not charset:
            try:
                charset = conn.character_set_name()
            except Exception:  # noqa: BLE001 - leave the server's choice alone
                charset = None
        return charset, conn_params.get("collation")

    def _send_reset(self, conn: Any) -> None:
        native = self._native
        if native is not None and native.reset is not None:
            if native.reset(native.handle(conn)) == 0:
                return
            raise self.module.OperationalError(conn.errno(), conn.error())
        raise self.module.NotSupportedError("reset_session needs MariaDB Connector/C's mysql_reset_connection")


_drivers: dict = {}


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
