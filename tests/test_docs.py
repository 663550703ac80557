"""The README cannot drift from the code: its option table, first commands and presets.

Its Python and settings examples are run by ``test_readme_examples``.
"""
from __future__ import annotations

from pathlib import Path

from autopool import presets
from autopool.doc import option_table

README = (Path(__file__).resolve().parent.parent / "README.rst").read_text(encoding="utf-8")


def test_option_table_matches_the_code():
    block = README.split(".. options-table-start\n\n", 1)[1].split("\n.. options-table-end", 1)[0]
    assert block == option_table(), "README option table is stale: regenerate with python -m autopool.doc"


def test_readme_opens_with_the_two_commands():
    first_block = README.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    lines = first_block.splitlines()
    assert len(lines) == 2 and all(line.strip().startswith("$ ") for line in lines)
    assert "demo" in lines[0] and "test" in lines[1]
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert lines[1].strip()[2:] in ci


def test_preset_table_matches_presets():
    assert "30 / 0 (core 5)" in README and presets.FAST_AND_WILD["pool_size"] == 30
    assert "120 s" in README and presets.SLOW_AND_SAFE["recycle"] == 120
