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

from collections.abc import Mapping
from typing import Any

from . import config as config_mod


def pooled_aliases(databases: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [alias for alias, db in databases.items() if db.get("POOL") is not None]


def targets(alias: str, db: Mapping[str, Any], cfg: Any) -> list[tuple[str, int]]:
    """The ``(host, port)`` pairs an alias may connect to."""
    default_port = int(db.get("PORT") or 3306)
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
        params.update(host=host, port=int(port or 3306))
    params.setdefault("connect_timeout", 5)
    conn = wrapper.Database.connect(**params)
    try:
        cur = conn.cursor()
        cur.execute("SELECT @@max_connections, @@max_user_connections, @@wait_timeout, @@hostname, "
                    "@@port, @@datadir, VERSION(), CURRENT_USER()")
        max_conn, max_user, wait_timeout, hostname, server_port, datadir, version, user = cur.fetchone()
        cur.execute("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        threads = int(cur.fetchone()[1])
        cur.close()
    finally:
        conn.close()
    if host is None:
        host = params.get("host") or params.get("unix_socket") or "localhost"
        port = params.get("port") or 3306
    return {
        "identity": (hostname, int(server_port), datadir),
        "address": _label(str(host), int(port or 3306)),
        "hostname": hostname,
        "port": int(server_port),
        "version": version,
        "user": user,
        "max_connections": int(max_conn),
        "max_user_connections": int(max_user),
        "wait_timeout": int(wait_timeout),
        "threads_connected": max(threads - 1, 0),  # not counting this check's own connection
    }


def survey(databases: Mapping[str, Mapping[str, Any]],
           aliases: list[str] | None = None) -> tuple[dict[Any, dict[str, Any]], list[tuple[str, str, str]]]:
    """``(servers, problems)``.

    ``servers``: identity -> ``{"info": ..., "members": [(alias, cfg, info), ...]}``, one member per
    alias reaching that server. ``problems``: ``(alias, address or "", message)`` for settings that
    do not parse and hosts that cannot be queried.
    """
    from django.core.exceptions import ImproperlyConfigured

    servers: dict[Any, dict[str, Any]] = {}
    problems: list[tuple[str, str, str]] = []
    for alias in aliases if aliases is not None else pooled_aliases(databases):
        db = databases[alias]
        try:
            cfg = config_mod.parse(alias, db["POOL"])
        except ImproperlyConfigured as exc:
            problems.append((alias, "", str(exc)))
            continue
        multi = cfg.hosts is not None
        for host, port in targets(alias, db, cfg):
            try:
                info = server_info(alias, host if multi else None, port if multi else None)
            except Exception as exc:  # noqa: BLE001 - any failure to reach the server is reported
                problems.append((alias, _label(host, port) if multi else "",
                                 f"cannot query the server: {type(exc).__name__}: {exc}"))
                continue
            server = servers.setdefault(info["identity"], {"info": info, "members": []})
            if all(m[0] != alias for m in server["members"]):
                server["members"].append((alias, cfg, info))
    return servers, problems


def fit(server: dict[str, Any], processes: int) -> dict[str, Any]:
    """The numbers for one server: per process, needed, free, and the aliases without a bound."""
    info = server["info"]
    per_process = sum(cfg.pool_size + cfg.max_overflow for _, cfg, _ in server["members"] if cfg.max_overflow >= 0)
    unbounded = [alias for alias, cfg, _ in server["members"] if cfg.max_overflow < 0]
    free = info["max_connections"] - info["threads_connected"]
    needed = processes * per_process
    return {"per_process": per_process, "needed": needed, "free": free, "unbounded": unbounded,
            "fits": not unbounded and needed <= free}
