"""A Python recipe of the documentation, found by a text only its block contains, for the tests
that run it inside a real server or worker (tests/uwsgi_app.py, tests/celeryapp.py)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def recipe(marker: str) -> tuple[str, str]:
    """(source, "file (line)") of the one ``code-block:: python`` of README.rst or docs/*.rst
    containing ``marker``."""
    from tests.readme_examples import blocks

    found = []
    for path in [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]:
        if not path.exists():
            continue
        for kind, line, source in blocks(path.read_text(encoding="utf-8")):
            if kind == "python" and marker in source:
                found.append((source, f"{path.relative_to(ROOT)} (line {line})"))
    if len(found) != 1:
        raise LookupError(f"{len(found)} Python blocks of the documentation contain {marker!r}: "
                          f"{[where for _, where in found]}")
    return found[0]
