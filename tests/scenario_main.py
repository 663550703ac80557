"""The command-line entry shared by the scenario modules run in fresh processes."""
from __future__ import annotations

import json
import os
import sys
from typing import Any


def main(namespace: dict[str, Any]) -> None:
    """Run ``scenario_<argv[1]>`` with JSON ``argv[2]``; print its JSON result and exit at once."""
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
