"""The documentation's option table (docs/options.rst), generated from :data:`autopool.config.OPTIONS`.

``python -m autopool.doc`` prints it; ``python -m autopool.doc --write`` rewrites
it in place in docs/options.rst, between the ``options-table-start`` and
``options-table-end`` comments. ``tests/test_docs.py`` checks that the page holds
exactly this text, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .config import OPTIONS

START, END = ".. options-table-start\n\n", "\n.. options-table-end"
PAGE = Path(__file__).resolve().parent.parent / "docs" / "options.rst"


def option_table() -> str:
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 22 14 64",
        "",
        "   * - Option",
        "     - Default",
        "     - Meaning",
    ]
    for opt in OPTIONS:
        lines += [f"   * - ``{opt.name}``", f"     - ``{opt.default!r}``", f"     - {opt.doc}"]
    return "\n".join(lines) + "\n"


def table_in(text: str) -> str:
    """The option table as it stands in a page's text."""
    return text.split(START, 1)[1].split(END, 1)[0]


def write(page: Path = PAGE) -> None:
    text = page.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    page.write_text(head + START + option_table() + END + rest.split(END, 1)[1], encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        print(option_table(), end="")
