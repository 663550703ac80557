"""``manage.py autopool``: look at and operate the pools.

* ``stats [alias] [--json] [--connect]`` prints ``autopool.stats()``: the pools
  of *this* process. A fresh ``manage.py`` process has none until it connects;
  ``--connect`` checks one connection out and back per pooled alias first. To
  see a running server's pools, call ``autopool.stats()`` (or
  ``call_command("autopool", "stats")``) inside it, or scrape the Prometheus
  exporter.
* ``dispose [alias]`` closes this process's pools (``autopool.dispose``).
* ``check-server [--processes N]`` asks each pooled alias's server (every
  host of a multi-host alias, see ``autopool.fleet``) for ``max_connections``
  and ``Threads_connected`` and checks that N processes, each filling every
  pool that reaches that server, fit. Exit status 1 when
  something does not fit (each problem on a ``WARNING`` or ``ERROR`` line).
"""

from __future__ import annotations

import json
import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

import autopool
from autopool import config as config_mod
from autopool import fleet
from autopool.introspect import FIELDS


class Command(BaseCommand):
    help = "Show autopool's pools (stats), close them (dispose) or check the server's capacity (check-server)."
    # The checks would stop the command on the very POOL errors it helps to diagnose.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        sub = parser.add_subparsers(dest="action", metavar="{stats,dispose,check-server}", required=True)
        p = sub.add_parser("stats", help="The pools of this process (autopool.stats()).")
        p.add_argument("alias", nargs="?", help="Only this DATABASES alias.")
        p.add_argument("--json", action="store_true", help="Print a JSON list of dicts instead of a table.")
        p.add_argument(
            "--connect",
            action="store_true",
            help="Check one connection out of each pooled alias (and back) first, so its pool exists in this process.",
        )
        p = sub.add_parser("dispose", help="Close the pools of this process (autopool.dispose()).")
        p.add_argument("alias", nargs="?", help="Only this DATABASES alias.")
        p = sub.add_parser("check-server", help="Check that N processes' pools fit in each server's max_connections.")
        p.add_argument(
            "--processes",
            type=int,
            default=1,
            metavar="N",
            help="Processes that each fill their pools: gunicorn/uWSGI workers plus Celery "
            "worker processes and anything else running this project (default 1).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        alias = options.get("alias")
        if alias is not None and alias not in settings.DATABASES and not autopool.stats(alias):
            raise CommandError(f"no DATABASES alias or pool {alias!r} (aliases: {', '.join(settings.DATABASES)})")
        if action == "stats":
            self.stats(alias, as_json=options["json"], connect=options["connect"])
        elif action == "dispose":
            n = autopool.dispose(alias)
            self.stdout.write(f"Disposed {n} pool(s) of process {os.getpid()}" + (f" for {alias!r}." if alias else "."))
        else:
            if options["processes"] < 1:
                raise CommandError("--processes must be at least 1")
            self.check_server(options["processes"])

    # -- stats -------------------------------------------------------------------
    def stats(self, alias: str | None, *, as_json: bool, connect: bool) -> None:
        wanted = [alias] if alias else fleet.pooled_aliases(settings.DATABASES)
        if connect:
            self._warm([a for a in wanted if a in settings.DATABASES])
        rows = autopool.stats(alias)
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2, default=str))
            return
        notes = []
        if not autopool.is_installed():
            notes.append("autopool.install() was not called in this process: nothing is pooled here.")
        elif not config_mod.enabled():
            notes.append("pooling is disabled (AUTOPOOL_ENABLED): nothing is pooled here.")
        live = {row["alias"] for row in rows}
        missing = [a for a in wanted if a not in live and settings.DATABASES.get(a, {}).get("POOL") is not None]
        if missing and not notes:
            notes.append(
                f"no pool yet in this process for {', '.join(repr(a) for a in missing)} "
                "(pools open on first use; --connect opens one now)."
            )
        if rows:
            self.stdout.write(_table(rows))
        elif not notes:
            notes.append("no pooled DATABASES alias (none has a POOL setting).")
        for note in notes:
            self.stdout.write(f"Note: {note}")

    def _warm(self, aliases: list[str]) -> None:
        from django.db import connections

        failed = []
        for a in aliases:
            try:
                connections[a].ensure_connection()
            except Exception as exc:  # noqa: BLE001 - reported, then the command fails
                failed.append(a)
                self.stderr.write(f"ERROR {a}: cannot connect: {type(exc).__name__}: {exc}")
            finally:
                connections[a].close()
        if failed:
            raise CommandError(f"could not connect to {', '.join(repr(a) for a in failed)}")

    # -- check-server ------------------------------------------------------------
    def check_server(self, processes: int) -> None:
        """Format what ``fleet.py`` measures: each server's pools against its connection limits."""
        aliases = fleet.pooled_aliases(settings.DATABASES)
        if not aliases:
            self.stdout.write("No DATABASES alias has a POOL setting: nothing to check.")
            return
        if not config_mod.enabled():
            self.stdout.write("Note: pooling is disabled (AUTOPOOL_ENABLED); checking the POOL settings anyway.")
        # Every host of every alias over a connection of its own (a multi-host alias counts in
        # full on each of its hosts: after a failover all its connections may be on any one).
        servers, failed = fleet.survey(settings.DATABASES, aliases)
        for problem in failed:
            where = f" ({problem.address})" if problem.address else ""
            self.stdout.write(f"ERROR {problem.alias}{where}: {problem.message}")
        problems = len(failed)
        for server in servers.values():
            problems += self._report_server(server, processes)
        if problems:
            raise CommandError(f"check-server found {problems} problem(s); see the WARNING/ERROR lines above")
        self.stdout.write("OK: the pools fit.")

    def _report_server(self, server: dict[str, Any], processes: int) -> int:
        w = self.stdout.write
        info, numbers = server["info"], fleet.fit(server, processes)
        w(f"Server {info['address']} ({info['version']}, hostname {info['hostname']}, port {info['port']})")
        for alias, cfg, _ in server["members"]:
            if cfg.max_overflow < 0:
                w(f"  {alias:<16} pool_size {cfg.pool_size} + max_overflow unlimited (-1)")
            else:
                most = cfg.pool_size + cfg.max_overflow
                w(f"  {alias:<16} pool_size {cfg.pool_size} + max_overflow {cfg.max_overflow} = {most} per process")
        max_conn, in_use = info["max_connections"], info["threads_connected"]
        per_process, needed, free = numbers["per_process"], numbers["needed"], numbers["free"]
        w(f"  max_connections {max_conn}, Threads_connected {in_use} (not counting this check): {free} free")
        w(f"  needed: {processes} process(es) x {per_process} = {needed}")
        problems = 0
        if numbers["unbounded"]:
            problems += 1
            w(
                f"WARNING: max_overflow=-1 on {', '.join(repr(a) for a in numbers['unbounded'])} lets the pool "
                f"open connections without limit: it cannot be checked against max_connections={max_conn}; "
                "set a bounded max_overflow."
            )
        elif not numbers["fits"]:
            problems += 1
            w(
                f"WARNING: {processes} process(es) x {per_process} = {needed} connections do not fit in the "
                f"{free} free of max_connections={max_conn} ({in_use} in use) on {info['address']}: short by "
                f"{needed - free}. Lower pool_size/max_overflow, run fewer processes, or raise max_connections."
            )
        else:
            w(f"  headroom: {free - needed} connection(s)")
        for user, most, user_needed in numbers["users_over"]:
            problems += 1
            w(
                f"WARNING: {processes} process(es) x {most} = {user_needed} connections of {user} "
                f"exceed its max_user_connections={info['max_user_connections']}."
            )
        for alias, recycle_seconds, wait_timeout in numbers["recycle_too_long"]:
            problems += 1
            recycle = "never (-1)" if recycle_seconds < 0 else f"{recycle_seconds:g} s"
            w(
                f"WARNING: {alias}: recycle={recycle} is not below the server's wait_timeout="
                f"{wait_timeout} s and pre_ping is off: the server may close idle pooled connections "
                "first (MySQL server has gone away). Set recycle below wait_timeout or enable pre_ping."
            )
        return problems


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _table(rows: list[dict[str, Any]]) -> str:
    """One line per field, one column per pool."""
    keys = [k for k in FIELDS if k != "alias"]
    width = max(len(k) for k in FIELDS)
    cols = [[_fmt(row.get(k)) for k in keys] for row in rows]
    col_w = [max([len(row["alias"])] + [len(v) for v in col]) for row, col in zip(rows, cols)]
    lines = ["  ".join([f"{'alias':<{width}}"] + [f"{row['alias']:<{w}}" for row, w in zip(rows, col_w)])]
    for i, key in enumerate(keys):
        lines.append("  ".join([f"{key:<{width}}"] + [f"{col[i]:<{w}}" for col, w in zip(cols, col_w)]))
    return "\n".join(line.rstrip() for line in lines)
