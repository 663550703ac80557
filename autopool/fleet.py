"""Fleet sizing: do N processes' pools fit in each server's ``max_connections``?

Every host of every pooled alias is asked for ``max_connections`` and
``Threads_connected`` over a connection of its own (never a pooled one).
Aliases reaching the same server (same ``@@hostname``, ``@@port`` and
``@@datadir``, however it is addressed) are summed. A multi-host alias counts
in full on *each* of its hosts: after a failover, all of its connections may
be on any one of them.

Used by ``manage.py autopool check-server --processes N`` and by the
``autopool.W010`` system check (``manage.py check --database default``,
``AUTOPOOL_PROCESSES`` setting).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import config as config_mod
from .hosts import DEFAULT_PORT


class ProblemKind(enum.Enum):
    """Why an alias is missing from the sizing."""

    INVALID_SETTING = "invalid setting"  # its POOL does not parse (the settings check E001 reports it)
    UNREACHABLE = "unreachable"  # a host of it cannot be queried


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    alias: str
    address: str  # "host:port" of a multi-host alias's host; "" for a single-host alias
    message: str


def pooled_aliases(databases: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [alias for alias, db in databases.items() if db.get("POOL") is not None]


def targets(alias: str, db: Mapping[str, Any], cfg: Any) -> list[tuple[str, int]]:
    """The ``(host, port)`` pairs an alias may connect to."""
    default_port = int(db.get("PORT") or DEFAULT_PORT)
    if cfg.hosts is not None:
        return [(host, port or default_port) for host, port in cfg.hosts]
    return [(db.get("HOST") or "localhost", default_port)]


def _label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_info(alias: str, host: str | None = None, port: int | None = None) -> dict[str, Any]:
    """What sizing needs from one host of ``alias``: a direct connection, three queries, closed."""
    from django.db import connections

    wrapper = connections[alias]
    params = dict(wrapper.get_connection_params())
    if host is not None:
        params.pop("unix_socket", None)
        params.update(host=host, port=int(port or DEFAULT_PORT))
    params.setdefault("connect_timeout", 5)
    conn = wrapper.Database.connect(**params)
    try:
        cur = conn.cursor()
        cur.execute(
            "SELECT @@max_connections, @@max_user_connections, @@wait_timeout, @@hostname, "
            "@@port, @@datadir, VERSION(), CURRENT_USER()"
        )
        max_conn, max_user, wait_timeout, hostname, server_port, datadir, version, user = cur.fetchone()
        cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        threads = int(cur.fetchone()[1])
        cur.close()
    finally:
        conn.close()
    if host is None:
        host = params.get("host") or params.get("unix_socket") or "localhost"
        port = params.get("port") or DEFAULT_PORT
    return {
        "identity": (hostname, int(server_port), datadir),
        "address": _label(str(host), int(port or DEFAULT_PORT)),
        "hostname": hostname,
        "port": int(server_port),
        "version": version,
        "user": user,
        "max_connections": int(max_conn),
        "max_user_connections": int(max_user),
        "wait_timeout": int(wait_timeout),
        "threads_connected": max(threads - 1, 0),  # not counting this check's own connection
    }


def survey(
    databases: Mapping[str, Mapping[str, Any]], aliases: list[str] | None = None
) -> tuple[dict[Any, dict[str, Any]], list[Problem]]:
    """``(servers, problems)``.

    ``servers``: identity -> ``{"info": ..., "members": [(alias, cfg, info), ...]}``, one member per
    alias reaching that server. ``problems``: a :class:`Problem` per setting that does not parse
    and per host that cannot be queried.
    """
    from django.core.exceptions import ImproperlyConfigured

    servers: dict[Any, dict[str, Any]] = {}
    problems: list[Problem] = []
    for alias in aliases if aliases is not None else pooled_aliases(databases):
        db = databases[alias]
        try:
            cfg = config_mod.parse(alias, db["POOL"])
        except ImproperlyConfigured as exc:
            problems.append(Problem(ProblemKind.INVALID_SETTING, alias, "", str(exc)))
            continue
        multi = cfg.hosts is not None
        for host, port in targets(alias, db, cfg):
            try:
                info = server_info(alias, host if multi else None, port if multi else None)
            except Exception as exc:  # noqa: BLE001 - any failure to reach the server is reported
                address = _label(host, port) if multi else ""
                message = f"cannot query the server: {type(exc).__name__}: {exc}"
                problems.append(Problem(ProblemKind.UNREACHABLE, alias, address, message))
                continue
            server = servers.setdefault(info["identity"], {"info": info, "members": []})
            if all(m[0] != alias for m in server["members"]):
                server["members"].append((alias, cfg, info))
    return servers, problems


def fit(server: dict[str, Any], processes: int) -> dict[str, Any]:
    """The numbers for one server of :func:`survey`, for ``processes`` processes.

    ``per_process``, ``needed``, ``free`` (``max_connections`` minus ``Threads_connected``),
    ``unbounded`` (aliases with ``max_overflow=-1``), ``fits``; ``users_over``: ``(user, per
    process, needed)`` for each login whose pools exceed a non-zero ``max_user_connections``;
    ``recycle_too_long``: ``(alias, recycle, wait_timeout)`` for each alias without pre-ping whose
    connections may outlive the server's ``wait_timeout``.
    """
    info = server["info"]
    members = server["members"]
    per_process = sum(cfg.pool_size + cfg.max_overflow for _, cfg, _ in members if cfg.max_overflow >= 0)
    unbounded = [alias for alias, cfg, _ in members if cfg.max_overflow < 0]
    free = info["max_connections"] - info["threads_connected"]
    needed = processes * per_process
    by_user: dict[str, int] = {}
    for _, cfg, member in members:
        if cfg.max_overflow >= 0:
            by_user[member["user"]] = by_user.get(member["user"], 0) + cfg.pool_size + cfg.max_overflow
    user_limit = info["max_user_connections"]
    users_over = [
        (user, most, processes * most)
        for user, most in sorted(by_user.items())
        if user_limit > 0 and processes * most > user_limit
    ]
    recycle_too_long = [
        (alias, cfg.recycle, member["wait_timeout"])
        for alias, cfg, member in members
        if not cfg.any_pre_ping and (cfg.recycle < 0 or cfg.recycle >= member["wait_timeout"])
    ]
    return {
        "per_process": per_process,
        "needed": needed,
        "free": free,
        "unbounded": unbounded,
        "fits": not unbounded and needed <= free,
        "users_over": users_over,
        "recycle_too_long": recycle_too_long,
    }
