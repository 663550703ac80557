"""One housekeeping task per process for every pool.

A daemon thread; under gevent monkey patching ``threading.Thread`` is a
greenlet, so the task never needs its own OS thread there. It only retires
idle connections (outside the pool lock's critical section for the close
itself), so it never blocks a request. Each round reclaims connections
abandoned by greenlets or threads that ended without closing them, and lets
elastic pools retire idle connections. Stopped by ``uninstall()``; after
``fork()`` the child starts a fresh one on demand (``fork.py`` calls
:func:`reset_after_fork`).
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from typing import Any, Protocol

from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger("autopool")

# Seconds between two rounds when nothing is due earlier: the pools' scan for connections abandoned
# by ended threads or greenlets, the hosts' probes, the replicas' lag checks. Also the longest sleep,
# so a changed callable interval takes effect soon.
ROUND_INTERVAL = 1.0


class Housekeeper(Protocol):
    """What :func:`register` takes: a pool, a multi-host set, the replica monitor."""

    def housekeep(self) -> float:
        """Do what is due; return the seconds until it wants to run again."""


_pools: weakref.WeakSet[Housekeeper] = weakref.WeakSet()
# pool -> the ImproperlyConfigured message already logged for it
_misconfigured: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_thread: threading.Thread | None = None
_stop: threading.Event | None = None
_lock = threading.Lock()


def register(pool: Any) -> None:
    if not hasattr(pool, "housekeep"):
        return
    _pools.add(pool)
    _ensure_started()


def unregister(pool: Any) -> None:
    _pools.discard(pool)


def run_once() -> float:
    """Retire what is due in every pool; return seconds until the next round."""
    wait = ROUND_INTERVAL
    for pool in list(_pools):
        try:
            due = pool.housekeep()
        except ImproperlyConfigured as exc:
            # A callable option returned a bad value (config.checked): one ERROR
            # line when the problem starts or changes, not a traceback a round.
            if _misconfigured.get(pool) != str(exc):
                _misconfigured[pool] = str(exc)
                logger.error("housekeeping of %r skipped: %s", getattr(pool, "name", pool), exc)
            continue
        except Exception:  # noqa: BLE001 - a broken pool must not stop the others
            logger.exception("housekeeping failed for %r", getattr(pool, "name", pool))
            continue
        _misconfigured.pop(pool, None)
        wait = min(wait, max(due, 0.0))  # housekeep() returns the seconds until it wants to run again
    return wait


def _run(stop: threading.Event) -> None:
    while not stop.is_set():
        stop.wait(run_once() or 0.01)


def _ensure_started() -> None:
    global _thread, _stop
    with _lock:
        if _thread is not None and _thread.is_alive():
            return
        _stop = threading.Event()
        _thread = threading.Thread(target=_run, args=(_stop,), name="autopool-housekeeping", daemon=True)
        _thread.start()


def stop(timeout: float = 5.0) -> None:
    """Stop the task and wait for it (used by ``uninstall()`` and tests)."""
    global _thread, _stop
    with _lock:
        thread, event = _thread, _stop
        _thread = _stop = None
    if event is not None:
        event.set()
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)


def lock_for_fork(timeout: float) -> bool:
    """Before ``os.fork()`` (``fork.py``): hold the task and its registrations still, so the child copies it whole.

    False if another thread kept it ``timeout`` seconds.
    """
    return _lock.acquire(timeout=timeout)


def release_after_fork() -> None:
    """After ``os.fork()``, in the parent and in the child: let go of what :func:`lock_for_fork` took."""
    _lock.release()


def reset_after_fork() -> None:
    """In a forked child: no task, nothing registered, a fresh lock."""
    global _thread, _stop, _lock
    event = _stop
    _thread = _stop = None
    _lock = threading.Lock()
    _pools.clear()
    if event is not None and _threads_are_greenlets():
        # The parent's task is a greenlet, copied into the child and still running there (although
        # threading now calls it stopped) beside the child's own: end it. A real thread is gone.
        event.set()


def _threads_are_greenlets() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))
