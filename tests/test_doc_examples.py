"""The documentation's pages (docs/*.rst) hold no Python that is not run.

Their examples run in ``tests/test_readme_examples.py`` through the same runner as
the README's (``tests/readme_examples.py`` reads README.rst and docs/*.rst); this
module checks that every Python block of the pages is marked and named, that every
named example exists somewhere, and runs the examples only the pages have.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.readme_examples import DOCS, MARKERS, all_python_examples, blocks, python_examples, sources


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.rst")), ids=lambda p: p.name)
def test_every_python_block_of_the_pages_is_marked_and_named(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for kind, line, source in blocks(text):
        if kind == "python":
            continue
        try:
            compile(source, page.name, "exec")
        except SyntaxError:
            continue  # shell sessions, program output, formulas
        pytest.fail(f"docs/{page.name} line {line}: a {kind} block that is Python; "
                    f"make it '.. code-block:: python' so that it is run")
    python_examples(text)  # raises LookupError for a Python block no marker names


def test_every_named_example_exists_once() -> None:
    assert sorted(all_python_examples()) == sorted(MARKERS)
    assert sources()[0].name == "README.rst" and len(sources()) > 10


def test_pymysql_settings_lines(mariadb) -> None:
    env = dict(os.environ, **mariadb.env())
    proc = subprocess.run([sys.executable, "-m", "tests.readme_examples", "pymysql_settings", "{}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["mysqldb"] == "pymysql" and result["driver"] == "pymysql"
    assert result["aliases"]["default"]["checkouts"] == 1
