"""Per-pool counters.

Plain integer attributes bumped where the event already happens, with no
lock of their own: under the GIL (or gevent) a lost increment is possible
only between threads racing on the same counter, which is acceptable for
monitoring and costs nothing on the checkout path.
"""
from __future__ import annotations

from typing import Dict, Union

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


class Counters:
    __slots__ = COUNTERS + ("wait_time_total", "wait_time_max")

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

    def as_dict(self) -> Dict[str, Union[int, float]]:
        return {name: getattr(self, name) for name in self.__slots__}
