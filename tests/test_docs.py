"""The documentation cannot drift from the code.

* README.rst opens with the two commands; the option table of docs/options.rst is
  generated from the code; the preset table matches the presets.
* ``sphinx-build -W`` builds docs/ with warnings as errors.
* Every output block preceded by an ``.. output-check: NAME`` comment is what the
  code prints: the command runs here, in a fresh process of a throw-away project
  (``tests/test_advice.py``'s), against the test server, and its output is compared
  with the page, numbers and connection addresses normalised.

Python and settings examples are run by ``test_readme_examples``/``test_doc_examples``.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from autopool import presets
from autopool.doc import option_table, table_in
from tests.mariadb import Server
from tests.readme_examples import blocks
from tests.test_advice import database, project, run  # noqa: F401 - project is a fixture

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.rst").read_text(encoding="utf-8")
DOCS = ROOT / "docs"


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def test_option_table_matches_the_code():
    assert table_in(page("options.rst")) == option_table(), \
        "docs/options.rst option table is stale: regenerate with python -m autopool.doc --write"


def test_readme_opens_with_the_two_commands():
    first_block = README.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    lines = first_block.splitlines()
    assert lines == ["    $ bash scripts/demo.sh", "    $ bash scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert lines[1].strip()[2:] in ci
    # Where the repository is comes before anything asks to run its scripts.
    opening = " ".join(README.split("$ bash scripts/demo.sh", 1)[0].split())
    assert "git clone https://github.com/" in opening and "cd django-mysql-autopool" in opening


def test_readme_is_short_and_points_at_the_docs():
    assert len(README.splitlines()) < 300
    for target in ("docs/troubleshooting.rst", "docs/faq.rst"):
        assert target in README and (ROOT / target).exists()


def test_preset_table_matches_presets():
    text = page("presets.rst")
    assert "30 / 0 (core 5)" in text and presets.FAST_AND_WILD["pool_size"] == 30
    assert presets.FAST_AND_WILD.get("django_core_pool_size") == 5
    assert "120 s" in text and presets.SLOW_AND_SAFE["recycle"] == 120


def test_sphinx_builds_without_warnings(tmp_path: Path):
    pytest.importorskip("sphinx", reason="sphinx is not installed (requirements-test.txt has it)")
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(DOCS), str(tmp_path / "html")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "html" / "troubleshooting.html").exists()


# -- outputs shown in the documentation ----------------------------------------------------------

def shown_outputs() -> dict[str, str]:
    """``{name: block}`` for each literal block that follows an ``.. output-check: NAME`` comment."""
    found: dict[str, str] = {}
    for path in sorted(DOCS.glob("*.rst")):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"^ *\.\. output-check: (\S+)\n", text, re.M):
            kind, _, source = blocks(text[match.end():])[0]
            assert kind == "literal", f"{path.name}: output-check {match.group(1)} is not followed by a literal block"
            found[match.group(1)] = source
    return found


def normalise(text: str) -> list[str]:
    text = re.sub(r"valid options are: [a-z_, ]+", "valid options are: …", text)
    text = re.sub(r"<PoolEntry alias='(\w+)' [^>]*>", r"<PoolEntry alias='\1' …>", text)
    text = re.sub(r"\d+", "N", text)
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def without_prompt(block: str) -> str:
    return block.split("\n", 1)[1] if block.startswith("$ ") else block


OUTPUTS = shown_outputs()


def test_every_output_check_is_run():
    assert sorted(OUTPUTS) == ["check-disabled", "check-errors", "dispose", "log-lines", "runtime-warning",
                               "stats-fresh", "stats-json", "stats-table"]


def two_aliases(server: Server, **default: Any) -> dict[str, Any]:
    return {"default": database(server, POOL={"pool_size": 10, "max_overflow": 10, "timeout": 10}, **default),
            "replica": database(server, POOL="fast_and_sane")}


def test_check_output_with_errors(project: Path, mariadb: Server):
    dbs = two_aliases(mariadb, CONN_MAX_AGE=60)
    dbs["replica"]["POOL"] = {"preset": "fast_and_sane", "max_overflw": 5}
    proc = subprocess.run([sys.executable, "manage.py", "check"], cwd=project, env=_env(project, dbs),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert normalise(proc.stdout + proc.stderr) == normalise(without_prompt(OUTPUTS["check-errors"]))


def test_check_output_disabled(project: Path, mariadb: Server):
    proc = run(project, ["manage.py", "check"], two_aliases(mariadb), env={"AUTOPOOL_ENABLED": "0"})
    assert normalise(proc.stdout + proc.stderr) == normalise(without_prompt(OUTPUTS["check-disabled"]))


def test_runtime_warning_line(project: Path, mariadb: Server):
    proc = run(project, ["manage.py", "shell", "-c", "pass"], two_aliases(mariadb, CONN_MAX_AGE=60))
    [line] = [ln[len("LOG WARNING autopool "):] for ln in proc.stderr.splitlines()
              if ln.startswith("LOG WARNING autopool ")]
    assert normalise(line) == normalise(OUTPUTS["runtime-warning"])


def test_log_lines(project: Path, mariadb: Server):
    code = ("import autopool\nfrom django.db import connection\nconnection.cursor().execute('SELECT 1')\n"
            "connection.close()\nautopool.dispose('default')")
    proc = run(project, ["manage.py", "shell", "-c", code], two_aliases(mariadb), env={"ADV_LOG_LEVEL": "INFO"})
    lines = [ln[len("LOG INFO autopool "):] for ln in proc.stderr.splitlines() if ln.startswith("LOG INFO autopool ")]
    assert normalise("\n".join(lines)) == normalise(OUTPUTS["log-lines"])


def test_manage_py_autopool_outputs(project: Path, mariadb: Server):
    fresh = run(project, ["manage.py", "autopool", "stats"], two_aliases(mariadb))
    assert normalise(fresh.stdout) == normalise(without_prompt(OUTPUTS["stats-fresh"]))
    dispose = run(project, ["manage.py", "autopool", "dispose"], two_aliases(mariadb))
    assert normalise(dispose.stdout) == normalise(without_prompt(OUTPUTS["dispose"]))


def test_stats_table_and_json_have_the_code_s_rows(project: Path, mariadb: Server):
    """The busy-process table and the JSON: every row of autopool.stats(), in its order (the figures
    themselves are one run's)."""
    code = ("import threading\nfrom django.core.management import call_command\nfrom django.db import connection\n"
            "def work():\n    for _ in range(3):\n        connection.cursor().execute('SELECT SLEEP(0.01)')\n"
            "        connection.close()\nthreads = [threading.Thread(target=work) for _ in range(4)]\n"
            "[t.start() for t in threads]\n[t.join() for t in threads]\n"
            "call_command('autopool', 'stats', 'default')")
    table = run(project, ["manage.py", "shell", "-c", code], two_aliases(mariadb)).stdout
    table = table[table.index("alias "):]  # after Django's shell banner ("N objects imported automatically.")
    rows = [line.split() for line in table.splitlines() if line.strip()]
    shown = [line.split() for line in OUTPUTS["stats-table"].splitlines() if line.strip()]
    assert [r[0] for r in rows] == [r[0] for r in shown]
    assert dict(rows)["checkouts"] == "12" and dict(rows)["pool_class"] == dict(shown)["pool_class"]

    listed = run(project, ["manage.py", "autopool", "stats", "replica", "--connect", "--json"],
                 two_aliases(mariadb)).stdout
    keys = list(json.loads(listed)[0])
    shown_keys = re.findall(r'^\s*"(\w+)":', OUTPUTS["stats-json"], re.M)
    head = shown_keys[:shown_keys.index("max_overflow") + 1]
    assert keys[:len(head)] == head and keys[-2:] == shown_keys[-2:]


def _env(project: Path, dbs: dict[str, Any]) -> dict[str, str]:
    import json
    import os

    environ = {k: v for k, v in os.environ.items() if k not in ("AUTOPOOL_ENABLED", "DJANGO_SETTINGS_MODULE")}
    environ.update(PYTHONPATH=os.pathsep.join([str(project), str(ROOT)]), PYTHONDONTWRITEBYTECODE="1",
                   ADV_DATABASES=json.dumps(dbs), DJANGO_SETTINGS_MODULE="advproj.settings")
    return environ


# -- install lines ------------------------------------------------------------------------------

def setup_kwargs() -> dict[str, Any]:
    """What setup.py passes to setuptools.setup()."""
    import runpy

    import setuptools

    captured: dict[str, Any] = {}
    original = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)
    try:
        runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = original
    return captured


def test_install_lines_name_the_distribution_and_its_extras():
    meta = setup_kwargs()
    texts = {"README.rst": README, "docs/install.rst": page("install.rst")}
    found = 0
    for where, text in texts.items():
        for line in re.findall(r"pip install [^\n`]*", text):
            for dist, extras in re.findall(r'"?([A-Za-z0-9_.-]+)\[([a-z0-9_,]+)\]"?', line):
                if dist in ("gunicorn", "celery"):
                    continue  # third-party extras: gunicorn[gevent], celery[redis]
                found += 1
                assert dist == meta["name"], f"{where}: {line!r} installs {dist!r}, not {meta['name']!r}"
                unknown = set(extras.split(",")) - set(meta["extras_require"])
                assert not unknown, f"{where}: {line!r}: no extra {unknown} in setup.py"
    assert found >= 5
    assert "pymysql.install_as_MySQLdb()" in README and "gunicorn[gevent]" in README
