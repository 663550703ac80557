"""Number-or-callable option values (the elastic pool's options) and how to read their current value.

A leaf module: the pools (``pool.py``) and the option table (``config.py``)
both import it, and it imports nothing of autopool's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import overload

Number = int | float
# Options of the elastic pool may be numbers or zero-argument callables
# evaluated each time they are used (the seed's contract).
Dynamic = Number | Callable[[], Number]


@overload
def evaluate(value: Dynamic) -> Number: ...
@overload
def evaluate(value: None) -> None: ...
@overload
def evaluate(value: Dynamic | None) -> Number | None: ...


def evaluate(value: Dynamic | None) -> Number | None:
    """The current value of a number-or-callable option.

    The pool calls this; ``config.checked`` wraps a callable option so that
    calling it validates what it returns.
    """
    return value() if callable(value) else value
