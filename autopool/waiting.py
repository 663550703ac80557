"""Blocked checkouts: one waiter each, handed a connection or an error by whoever frees one.

Modelled on psycopg_pool's ``WaitingClient``: :meth:`Waiter.set` and
:meth:`Waiter.fail` report whether the waiter took what they offered. A
waiter that gives up (its timeout ran out, or it was killed) and a return
that offers it a connection race for one claim; exactly one wins, without
the pool's lock. The loser of a return knows the waiter is gone and offers
the connection to the next one; the loser of a give-up knows a connection
was handed over and takes it (or hands it back).

Two ways to block: a pre-acquired lock between threads, and the gevent hub
when ``threading`` is monkey patched (a patched lock's timed acquire builds
a ``gevent.Timeout`` and a chain of link callbacks each time; a waiting
checkout is the common case of an overloaded pool, so it parks on the hub
directly: one timer, one callback).
"""

from __future__ import annotations

import threading
from typing import Any

try:
    from gevent._hub_local import get_hub_if_exists as _get_hub_if_exists
    from gevent._hub_local import get_hub_noargs as _get_hub
    from gevent.hub import Waiter as _HubWaiter
except ImportError:  # gevent is optional
    _get_hub = _get_hub_if_exists = _HubWaiter = None


class Waiter:
    """One blocked checkout. ``item`` or ``error`` is what it was handed."""

    __slots__ = ("_claim", "item", "error")

    def __init__(self) -> None:
        # Popped exactly once: by set()/fail() (handed over) or by the waiter
        # giving up. list.pop() is atomic, so the claim needs no lock.
        self._claim = [True]
        self.item: Any = None
        self.error: BaseException | None = None

    def _claimed(self) -> bool:
        try:
            self._claim.pop()
        except IndexError:
            return False
        return True

    def set(self, item: Any) -> bool:
        """Hand ``item`` over; False if the waiter has given up (``item`` is still the caller's)."""
        self.item = item  # before the claim: a waiter that loses it reads the item at once
        if not self._claimed():
            return False
        self._wake()
        return True

    def fail(self, error: BaseException) -> bool:
        """Make the wait raise ``error``; False if the waiter has given up."""
        self.error = error
        if not self._claimed():
            return False
        self._wake()
        return True

    def wait(self, timeout: float | None) -> bool:
        """Block until handed something (True) or until ``timeout`` seconds
        pass with nothing handed over (False: nothing ever will be)."""
        if self._block(timeout):
            return True
        # Timed out, unless a set()/fail() claimed us just now: then what it
        # handed over is already in item/error.
        return not self._claimed()

    def cancel(self) -> Any:
        """Give up (the wait was interrupted); return the item handed over
        meanwhile, which the caller must give back, else None."""
        if self._claimed():
            return None
        return self.item if self.error is None else None

    def _block(self, timeout: float | None) -> bool:
        raise NotImplementedError

    def _wake(self) -> None:
        raise NotImplementedError


class ThreadWaiter(Waiter):
    __slots__ = ("_lock",)

    def __init__(self) -> None:
        super().__init__()
        # A pre-acquired lock is the cheapest one-shot event between threads.
        self._lock = threading.Lock()
        self._lock.acquire()

    def _block(self, timeout: float | None) -> bool:
        return self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0))

    def _wake(self) -> None:
        self._lock.release()


class HubWaiter(Waiter):
    """Parks the calling greenlet on the gevent hub."""

    __slots__ = ("_hub", "_waiter")

    def __init__(self) -> None:
        super().__init__()
        self._hub = _get_hub()
        self._waiter = _HubWaiter(self._hub)

    def _block(self, timeout: float | None) -> bool:
        if timeout is None:
            return bool(self._waiter.get())
        timer = self._hub.loop.timer(max(timeout, 0))
        timer.start(self._waiter.switch, False)
        try:
            return bool(self._waiter.get())
        finally:
            timer.close()

    def _wake(self) -> None:
        # A switch scheduled after the waiter stopped waiting (it timed out and
        # then lost the claim) only stores the value in the gevent Waiter.
        loop = self._hub.loop
        if _get_hub_if_exists() is self._hub:
            loop.run_callback(self._waiter.switch, True)
        else:  # handed over from another thread (e.g. gevent's thread pool)
            loop.run_callback_threadsafe(self._waiter.switch, True)


def waiter_class() -> type[Waiter]:
    """The waiter for pools created now: on the hub when threading is gevent's."""
    if _get_hub is None:
        return ThreadWaiter
    from gevent import monkey

    return HubWaiter if monkey.is_module_patched("threading") else ThreadWaiter
