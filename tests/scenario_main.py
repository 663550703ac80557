"""The command-line entry shared by the scenario modules run in fresh processes."""
from __future__ import annotations

import json
import os
import sys
from typing import Any

DUMP_ENV = "AUTOPOOL_SCENARIO_DUMP_AFTER"


def _dump_stacks_after(seconds: float) -> None:
    """If the scenario still runs after ``seconds``, write every thread's and greenlet's stack to
    stderr, so a parent that then times out shows where it hung (from a real OS thread: the hub
    may be the one stuck)."""
    import faulthandler

    try:
        from gevent import monkey

        start_thread = monkey.get_original("_thread", "start_new_thread")
        sleep = monkey.get_original("time", "sleep")
    except ImportError:
        import _thread
        import time

        start_thread, sleep = _thread.start_new_thread, time.sleep

    def dump() -> None:
        sleep(seconds)
        sys.stderr.write(f"\n--- scenario still running after {seconds:.1f} s: stacks ---\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        if "gevent" in sys.modules:
            try:
                from gevent.util import format_run_info

                sys.stderr.write("\n".join(format_run_info(thread_stacks=False, greenlet_stacks=True,
                                                            limit=30)) + "\n")
            except Exception as exc:  # noqa: BLE001 - diagnostics only
                sys.stderr.write(f"(greenlet stacks unavailable: {exc!r})\n")
        sys.stderr.flush()

    start_thread(dump, ())


def main(namespace: dict[str, Any]) -> None:
    """Run ``scenario_<argv[1]>`` with JSON ``argv[2]``; print its JSON result and exit at once."""
    if os.environ.get(DUMP_ENV):
        _dump_stacks_after(float(os.environ[DUMP_ENV]))
    params = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    result = namespace["scenario_" + sys.argv[1]](params)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    from django.db import connections

    import autopool

    connections.close_all()
    autopool.dispose()
    os._exit(0)


def wait_until(predicate: Any, timeout: float = 10.0, message: str = "condition", fail: bool = True) -> Any:
    """Poll ``predicate`` until it returns a true value and return that value. After ``timeout`` s:
    fail the test, or with ``fail=False`` return the last (false) value.

    The one polling helper of the tests: under gevent's monkey patching ``time.sleep`` yields to the hub.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            if not fail:
                return value
            import pytest

            pytest.fail(f"{message} not reached within {timeout} s")
        time.sleep(0.005)
