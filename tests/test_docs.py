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
import os
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
    assert sorted(OUTPUTS) == ["check-disabled", "check-errors", "check-server",
                               "check-server-hosts", "dispose", "gunicorn-exit",
                               "log-lines", "no-healthy-host", "prometheus-scrape", "runtime-warning", "stats-fresh", "stats-json", "stats-table"]


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


def test_gunicorn_exit_lines(project: Path, mariadb: Server):
    """servers.rst: gunicorn's own line, formatted by gunicorn's logger, then what the worker_exit
    hook's ``autopool.dispose()`` logs with the LOGGING of docs/monitoring.rst (tests/test_gunicorn.py
    runs the real server and finds the same lines in its log)."""
    import inspect
    import logging

    gunicorn = pytest.importorskip("gunicorn.glogging")
    from gunicorn import arbiter

    shown = OUTPUTS["gunicorn-exit"].strip("\n").splitlines()
    message = "Worker exiting (pid: %s)"
    assert message in inspect.getsource(arbiter)
    record = logging.LogRecord("gunicorn.error", logging.INFO, __file__, 0, message, (4242,), None)
    record.process = 4242
    formatter = logging.Formatter(gunicorn.Logger.error_fmt, gunicorn.Logger.datefmt)
    utc_offset = re.compile(r"[+-]\d{4}\]")  # the machine's time zone
    assert normalise(utc_offset.sub("]", formatter.format(record))) == normalise(utc_offset.sub("]", shown[0]))

    code = ("import autopool\nfrom django.db import connection\nconnection.cursor().execute('SELECT 1')\n"
            "connection.close()\nautopool.dispose()")
    proc = run(project, ["manage.py", "shell", "-c", code], two_aliases(mariadb), env={"ADV_LOG_LEVEL": "INFO"})
    lines = [ln[len("LOG INFO autopool "):] for ln in proc.stderr.splitlines() if ln.startswith("LOG INFO autopool ")]
    assert normalise("\n".join(lines[1:])) == normalise("\n".join(shown[1:]))


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


def commands(block: str) -> list[tuple[str, str]]:
    """``[(command, its output)]`` of a block of ``$ `` lines, each followed by what it printed."""
    return [(chunk.split("\n", 1)[0], chunk.split("\n", 1)[1] if "\n" in chunk else "")
            for chunk in re.split(r"^\$ ", block, flags=re.M) if chunk.strip()]


def test_check_server_output(project: Path, mariadb: Server):
    """Both runs of the page: one that fits (exit 0) and one that does not (exit 1, ``echo $?``)."""
    shown = commands(OUTPUTS["check-server"])
    assert [c for c, _ in shown] == ["python manage.py autopool check-server --processes 8",
                                     "python manage.py autopool check-server --processes 16", "echo $?"]
    max_connections = int(mariadb.execute("SELECT @@max_connections")[0][0])
    per_process = 20 + 15  # two_aliases(): 10 + 10 and fast_and_sane's 5 + 10, as on the page
    server_line = re.compile(r"^(Server \S+) \(.*\)$", re.M)  # version and host name are the machine's
    for (command, output), processes, status in [(shown[0], 1, 0),
                                                 (shown[1], max_connections // per_process + 1, 1)]:
        proc = subprocess.run([sys.executable, "manage.py", "autopool", "check-server", "--processes",
                               str(processes)], cwd=project, env=_env(project, two_aliases(mariadb)),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == status, proc.stdout + proc.stderr
        real = server_line.sub(r"\1 (…)", proc.stdout + proc.stderr)
        assert normalise(real) == normalise(server_line.sub(r"\1 (…)", output)), command
    assert shown[2][1].strip() == "1"


def test_check_server_output_per_host(project: Path, mariadb: Server):
    """clusters.rst: the report of one server, for one alias that does not fit (the second server's
    report, cut on the page, has the same lines)."""
    command, output = commands(OUTPUTS["check-server-hosts"])[0]
    assert command == "python manage.py autopool check-server --processes 24"
    processes = int(mariadb.execute("SELECT @@max_connections")[0][0]) // 20 + 1  # 10 + 10 per process
    dbs = {"default": database(mariadb, POOL={"pool_size": 10, "max_overflow": 10, "timeout": 10})}
    proc = subprocess.run([sys.executable, "manage.py", "autopool", "check-server", "--processes", str(processes)],
                          cwd=project, env=_env(project, dbs), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr

    def neutral(text: str) -> list[str]:
        text = re.sub(r"^(Server \S+) \(.*\)$", r"\1 (…)", text, flags=re.M)
        return normalise(re.sub(r"db\d|127\.0\.0\.1", "HOST", text))

    real, shown = neutral(proc.stdout), neutral(output)
    assert real[:len(shown) - 2] == shown[:-2]
    cut = [line.rstrip(" …") for line in shown[-2:]]
    assert real[len(shown) - 2].startswith(cut[0]) and real[0].startswith(cut[1])


def test_prometheus_scrape_lines(project: Path, mariadb: Server):
    """Each line of the excerpt is a line of a real scrape (one connection checked out of default)."""
    pytest.importorskip("prometheus_client")
    code = ("from prometheus_client import generate_latest\nfrom django.db import connections\n"
            "from autopool.contrib import prometheus\nprometheus.register()\n"
            "connections['replica'].cursor().execute('SELECT 1')\nconnections['replica'].close()\n"
            "connections['default'].cursor().execute('SELECT 1')\n"
            "print(generate_latest().decode())")
    scrape = run(project, ["manage.py", "shell", "-c", code], two_aliases(mariadb)).stdout
    real = set(re.sub(r'database="\w+"', 'database="…"', scrape).splitlines())
    shown = re.sub(r'database="\w+"', 'database="…"', OUTPUTS["prometheus-scrape"]).strip().splitlines()
    missing = [line for line in shown if line not in real]
    assert not missing, f"not in a real scrape: {missing}"


def test_no_healthy_host_text(project: Path, mariadb: Server):
    """The page's traceback line: its head and a refused host's error from a real multi-host alias whose
    hosts refuse connections; the Galera host's reason from the health check given a non-Synced node's
    status row (no Galera cluster here: tests/test_galera.py has the real one)."""
    import socket

    from autopool import hosts

    ports = []
    for _ in range(2):
        with socket.socket() as s:  # a loopback port nobody listens on: connection refused
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    dbs = {"default": database(mariadb, OPTIONS={"connect_timeout": 2, "read_timeout": 30}, POOL={
        "pool_size": 10, "max_overflow": 10, "timeout": 1, "hosts": [f"127.0.0.1:{p}" for p in ports],
        "host_policy": "failover"})}
    code = ("import autopool\nfrom django.db import connection\ntry:\n    connection.ensure_connection()\n"
            "except autopool.NoHealthyHost as e:\n    print(f'{type(e).__module__}.{type(e).__name__}: {e}')")
    real = run(project, ["manage.py", "shell", "-c", code], dbs).stdout.strip().splitlines()[-1]
    shown = " ".join(OUTPUTS["no-healthy-host"].split())

    def host_neutral(text: str) -> str:
        return " ".join(normalise(re.sub(r"db\d|127\.0\.0\.1", "HOST", text)))

    head, galera, rest = shown.split("; ")
    real_head = real.split("; ")[0]
    assert len(real.split("; ")) == 2  # one part per host
    assert host_neutral(real_head.split(": OperationalError")[0]) == host_neutral(head.split(": OperationalError")[0])
    if os.environ.get("AUTOPOOL_TEST_DRIVER", "mysqlclient") == "mysqlclient":
        assert host_neutral(real_head) == host_neutral(head)  # mysqlclient's refused-connection text
    else:
        assert "OperationalError(2003, \"Can't connect to MySQL server on " in real_head, real_head

    class Row:
        def cursor(self) -> Any:
            return self

        def execute(self, sql: str) -> None:
            pass

        def fetchone(self) -> tuple[int, str, str]:
            return (1, "OFF", "0")  # @@wsrep_on, wsrep_ready, wsrep_local_state of a joining node

        def close(self) -> None:
            pass

    label, _, reason = galera.partition(": ")
    assert hosts.check_health(Row()) == (False, reason)
    assert rest == "db3:3306: …"


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


def test_the_package_check_tries_every_install_line():
    """scripts/package_check.sh runs tests/install_lines.py: it must find every line the pages show."""
    import shlex

    from tests.install_lines import documented_lines

    tried = [args for _, args in documented_lines()]
    shown = re.findall(r"^ +(pip install .*)$", README + page("install.rst"), re.M)
    shown += re.findall(r"``(pip install [^`]+)``", page("install.rst"))
    for line in shown:
        args = shlex.split(line, comments=True)[2:]
        assert any(t[-len(args):] == args for t in tried), f"install line not tried: {line}"
    assert len(shown) >= 12 and len(tried) >= 10
