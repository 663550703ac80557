"""The README cannot drift from the code: option table and examples are checked."""
from __future__ import annotations

import re
from pathlib import Path

from autopool import config, presets
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


def test_quickstart_settings_parse():
    code = README.split("# settings.py: ENGINE stays the stock one; add a POOL.\n", 1)[1]
    code = code.split("    INSTALLED_APPS", 1)[0]
    namespace: dict = {}
    exec(compile("\n".join(line[4:] for line in code.splitlines()), "README", "exec"), namespace)
    pool = namespace["DATABASES"]["default"]["POOL"]
    cfg = config.parse("default", pool)
    assert (cfg.pool_size, cfg.max_overflow, cfg.timeout, cfg.recycle) == (5, 10, 30, 3600)
    assert namespace["DATABASES"]["default"]["ENGINE"] == "django.db.backends.mysql"


def test_preset_table_matches_presets():
    assert "30 / 0 (core 5)" in README and presets.FAST_AND_WILD["pool_size"] == 30
    assert "120 s" in README and presets.SLOW_AND_SAFE["recycle"] == 120


def test_every_python_block_compiles():
    for block in re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", README):
        source = "\n".join(line[4:] for line in block.splitlines())
        source = source.replace("[..., ", "[")  # the elided INSTALLED_APPS list
        compile(source, "README", "exec")
