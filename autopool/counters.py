"""Per-pool counters (``Counters``), and the names and descriptions that ``autopool.stats()`` and the exporter show.

Plain integer attributes bumped where the event already happens, with no
lock of their own: under the GIL (or gevent) a lost increment is possible
only between threads racing on the same counter, which is acceptable for
monitoring and costs nothing on the checkout path.
"""

from __future__ import annotations

COUNTERS = (
    "connections_opened",
    "connections_closed",
    "connections_invalidated",
    "connections_recycled",
    "connections_retired",
    "checkouts",
    "waits",
    "timeouts",
    "too_many_waiters",
    "rollbacks_on_return",
    "session_resets",
    "leaks",
)
# Seconds: total and longest wait of the checkouts that had to wait.
WAIT_TIMES = ("wait_time_total", "wait_time_max")

# One line per counter, for tables, docs and the Prometheus exporter's HELP.
DESCRIPTIONS: dict[str, str] = {
    "connections_opened": "Physical connections opened.",
    "connections_closed": "Physical connections closed.",
    "connections_invalidated": "Connections closed as broken or judged unusable by Django.",
    "connections_recycled": "Connections replaced at checkout for being older than recycle.",
    "connections_retired": "Idle connections above the core size closed by the elastic pool.",
    "checkouts": "Connections handed out.",
    "waits": "Checkouts that had to wait for a connection (including those that timed out).",
    "timeouts": "Checkouts that gave up after the pool's timeout (PoolTimeout).",
    "too_many_waiters": "Checkouts refused at once because max_waiting requests already waited.",
    "rollbacks_on_return": "Returns that rolled back an open transaction.",
    "session_resets": "Returns that reset the server session (reset_session).",
    "leaks": "Connections garbage collected while checked out (closed, never reused).",
    "wait_time_total": "Seconds spent waiting for a connection, summed.",
    "wait_time_max": "Longest wait for a connection, in seconds.",
}


class Counters:
    """One pool's counters: the attributes named in COUNTERS (ints) and WAIT_TIMES (floats)."""

    __slots__ = COUNTERS + WAIT_TIMES
    # Declared for the type checker; __init__ sets them (the names must match COUNTERS/WAIT_TIMES).
    connections_opened: int
    connections_closed: int
    connections_invalidated: int
    connections_recycled: int
    connections_retired: int
    checkouts: int
    waits: int
    timeouts: int
    too_many_waiters: int
    rollbacks_on_return: int
    session_resets: int
    leaks: int
    wait_time_total: float
    wait_time_max: float

    def __init__(self) -> None:
        for name in COUNTERS:
            setattr(self, name, 0)
        self.wait_time_total = 0.0
        self.wait_time_max = 0.0

    def record_wait(self, seconds: float) -> None:
        self.waits += 1
        self.wait_time_total += seconds
        if seconds > self.wait_time_max:
            self.wait_time_max = seconds

    def as_dict(self) -> dict[str, int | float]:
        return {name: getattr(self, name) for name in self.__slots__}


assert tuple(Counters.__annotations__) == COUNTERS + WAIT_TIMES, "Counters' declarations and COUNTERS differ"
