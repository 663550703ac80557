"""Load through a multi-host alias on the Galera cluster, in a fresh gevent-patched process.

Run as ``python -m tests.galera_scenarios JSON`` by ``tests/test_galera.py``, which owns the cluster
and breaks it (SIGKILL, ``gmcast.isolate``) while this process keeps ``greenlets`` greenlets busy.
Each greenlet loops over requests: check out (first query), one write (``INSERT`` with the serving
node's ``@@port``) or one read (``SELECT @@port, COUNT(*)``), then ``connection.close()`` as Django
does at the end of a request. Every request is recorded as
``[start, end, kind, ok, port, errno, row id, served]`` (wall-clock seconds, so the controller can
compare with its own timeline; ``served``: the server's ``SYSDATE(6)`` as it executed the request). The run stops when ``stop_file`` exists; the record goes to ``out`` as JSON.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import gevent  # noqa: E402
import gevent.hub  # noqa: E402

# Diagnosis: where a gevent hub gets created in a thread-pool worker thread (a task there touched a
# gevent primitive; see autopool/gevent.py's connect hand-off).
_worker_hub_stacks: list = []

_hub_init = gevent.hub.Hub.__init__


def _recording_hub_init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    if len(_worker_hub_stacks) < 5:
        _worker_hub_stacks.append("".join(traceback.format_stack(limit=40)))
    _hub_init(self, *args, **kwargs)


gevent.hub.Hub.__init__ = _recording_hub_init


class Events(logging.Handler):
    """autopool's host state changes, with their wall-clock time."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith("host ") or msg.startswith("lost a connection"):
            self.seen.append([record.created, msg])


def setup(args: dict) -> None:
    import django
    from django.conf import settings

    from tests import djsettings

    djsettings.use_driver()
    ports = args["ports"]
    options = {"charset": "utf8mb4", "connect_timeout": 1, "read_timeout": args.get("read_timeout", 10)}
    if args.get("sync_wait"):
        # Causal reads: a node that is cut off but has not noticed yet cannot answer a read.
        options["init_command"] = "SET SESSION wsrep_sync_wait=1"
    settings.configure(
        USE_TZ=True, SECRET_KEY="x", INSTALLED_APPS=[],
        DATABASES={"default": {
            "ENGINE": "django.db.backends.mysql", "NAME": args["db"], "USER": args["user"],
            "PASSWORD": args["password"], "HOST": "127.0.0.1", "PORT": str(ports[0]), "CONN_MAX_AGE": 0,
            "OPTIONS": options,
            "POOL": {"pool_size": args.get("pool_size", 10), "max_overflow": 0, "timeout": 10,
                     "hosts": [f"127.0.0.1:{p}" for p in ports], "host_policy": "failover",
                     "host_down_backoff": 0.25, "host_down_backoff_max": 1.0},
        }},
    )
    import autopool

    autopool.install()
    django.setup()


def main() -> int:
    args = json.loads(sys.argv[1])
    events = Events()
    logger = logging.getLogger("autopool")
    logger.addHandler(events)
    logger.setLevel(logging.INFO)
    setup(args)
    from django.db import connection

    connects: list = []
    if args.get("trace_connects", True):
        # Which host each new connection went to, and how long the connect took (for diagnosis).
        from autopool import hosts as hosts_mod

        real_open = hosts_mod.HostSet._open

        def traced_open(self, host):  # type: ignore[no-untyped-def]
            t = time.time()
            try:
                conn = real_open(self, host)
            except BaseException as exc:
                connects.append([t, time.time(), host.port, type(exc).__name__])
                raise
            connects.append([t, time.time(), host.port, conn is not None])
            return conn

        hosts_mod.HostSet._open = traced_open
    n = args.get("greenlets", 50)
    pause = args.get("pause", 0.01)
    records: list = []
    stop = [False]

    def worker(g: int) -> None:
        i = 0
        while not stop[0]:
            i += 1
            write = i % 2 == 0
            row_id = args["id_base"] + g * 1_000_000 + i
            start = time.time()
            port = errno = served = None
            ok = False
            try:
                with connection.cursor() as cur:
                    # SYSDATE(6): when the server executed the statement (after a causal wait), on
                    # the same machine clock as the controller's timeline.
                    if write:
                        cur.execute("INSERT INTO items (id, g, port) VALUES (%s, %s, @@port)", [row_id, g])
                        cur.execute("SELECT @@port, UNIX_TIMESTAMP(SYSDATE(6))")
                        port, served = cur.fetchone()
                    else:
                        cur.execute("SELECT @@port, UNIX_TIMESTAMP(SYSDATE(6)), COUNT(*) FROM items "
                                    "WHERE g = %s", [g])
                        port, served, _ = cur.fetchone()
                    port, served = int(port), float(served)
                ok = True
            except Exception as exc:  # noqa: BLE001 - recorded
                args_ = getattr(exc, "args", ())
                errno = args_[0] if args_ and isinstance(args_[0], int) else type(exc).__name__
            finally:
                try:
                    connection.close()
                except Exception:  # noqa: BLE001
                    pass
            records.append([start, time.time(), "w" if write else "r", ok, port, errno,
                            row_id if write else None, served])
            gevent.sleep(pause)

    workers = [gevent.spawn(worker, g) for g in range(n)]
    deadline = time.monotonic() + args.get("max_seconds", 120)
    ready_written = False
    while not os.path.exists(args["stop_file"]) and time.monotonic() < deadline:
        if not ready_written and sum(1 for r in records if r[3]) >= n:
            with open(args["ready_file"], "w") as f:
                f.write("ready")
            ready_written = True
        gevent.sleep(0.02)
    stop[0] = True
    gevent.joinall(workers, timeout=30)
    from autopool import hosts

    stuck = ["".join(traceback.format_stack(w.gr_frame)) for w in workers if not w.dead and w.gr_frame]
    if stuck:
        tp = gevent.get_hub().threadpool
        stuck += ["threadpool %r unfinished=%s workers=%s" % (tp, tp.task_queue.unfinished_tasks,
                                                          len(tp._worker_greenlets))]
        from gevent.util import format_run_info

        stuck += ["\n".join(format_run_info(thread_stacks=True, greenlet_stacks=True, limit=60))]
    with open(args["out"], "w") as f:
        json.dump({"records": records, "events": events.seen, "hosts": hosts.status(),
                   "alive": sum(1 for w in workers if not w.dead), "stuck": stuck,
                   "connects": connects, "worker_hubs": _worker_hub_stacks[1:]}, f, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
