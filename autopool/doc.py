"""The README's option table, generated from :data:`autopool.config.OPTIONS`.

``python -m autopool.doc`` prints it; a test checks that README.rst holds
exactly this text, so the documentation cannot drift from the code.
"""
from __future__ import annotations

from .config import OPTIONS


def option_table() -> str:
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 22 14 64", "",
             "   * - Option", "     - Default", "     - Meaning"]
    for opt in OPTIONS:
        lines += [f"   * - ``{opt.name}``", f"     - ``{opt.default!r}``", f"     - {opt.doc}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(option_table(), end="")
