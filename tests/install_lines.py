"""Each ``pip install`` line the README and docs/install.rst show, run as written in its own fresh
virtualenv, then a smoke test that proves the line is enough for what it is documented for.

The lines are read from the documents themselves (an edited line is what gets tried); the built
wheel stands in for the distribution name (``"django-mysql-autopool[pymysql]"`` becomes
``"/tmp/.../django_mysql_autopool-X-py3-none-any.whl[pymysql]"``). The server table of
docs/install.rst says "add one of these to the driver's line (both in one pip install)": each row
is tried appended to the PyMySQL line (the driver that needs no compiler).

    python -m tests.install_lines WHEEL WORKDIR   # scripts/package_check.sh runs it

With the test server's environment (``eval "$(python -m tests.mariadb start)"``) the smoke test
also runs a query through the pool.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = "django-mysql-autopool"
PARALLEL = 3  # mostly waiting for pip's downloads and cache: a few at once halve the wall time


def _pip_args(command: str) -> list[str]:
    """``pip install a "b[c]"  # comment`` -> ``["a", "b[c]"]``."""
    words = shlex.split(command, comments=True)
    assert words[:2] == ["pip", "install"], command
    return words[2:]


def documented_lines() -> list[tuple[str, list[str]]]:
    """``[(where, requirements)]``: every pip line of README.rst's Install section and of
    docs/install.rst, duplicates dropped."""
    found: list[tuple[str, list[str]]] = []
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    install = readme.split("\nInstall\n-------\n", 1)[1].split("\n-----", 1)[0]
    for line in re.findall(r"^ {4}(pip install .*)$", install, re.M):
        found.append(("README.rst", _pip_args(line)))
    page = (ROOT / "docs" / "install.rst").read_text(encoding="utf-8")
    drivers = {}
    for line in re.findall(r"^ {8}(pip install .*)$", page, re.M):
        args = _pip_args(line)
        drivers[args[0]] = args
        found.append(("docs/install.rst", args))
    pymysql = drivers[f"{DIST}[pymysql]"]
    table = page.split("\nServers and workers\n", 1)[1].split("\n\n", 3)[2]
    assert table.startswith("====="), table
    for row in re.findall(r"^(\S.*?\S)\s+``(pip install [^`]*)``", table, re.M):
        found.append((f"docs/install.rst ({row[0]})", pymysql + _pip_args(row[1])))
    unique: dict[tuple[str, ...], tuple[str, list[str]]] = {}
    for where, args in found:
        unique.setdefault(tuple(args), (where, args))
    return list(unique.values())


def with_wheel(args: list[str], wheel: str) -> list[str]:
    out = []
    for arg in args:
        name, bracket, extras = arg.partition("[")
        out.append(wheel + bracket + extras if name == DIST else arg)
    return out


def smoke_code(args: list[str]) -> tuple[str, list[str]]:
    """The Python smoke test for a line, and the extra commands to run (console scripts)."""
    names = {re.split(r"[\[=<>]", a, maxsplit=1)[0].lower() for a in args}
    extras = set()
    for a in args:
        if a.startswith(DIST + "["):
            extras |= set(a[len(DIST) + 1:-1].split(","))
    code = ["import os, django", "from django.conf import settings"]
    if "pymysql" in extras:
        code += ["import pymysql", "pymysql.install_as_MySQLdb()"]
    code += [
        "import autopool",
        "autopool.install()",
        "db = {'ENGINE': 'django.db.backends.mysql', 'POOL': {'pool_size': 2}, 'NAME': 'mysql',",
        "      'HOST': os.environ.get('AUTOPOOL_TEST_MYSQL_HOST', '127.0.0.1'),",
        "      'PORT': os.environ.get('AUTOPOOL_TEST_MYSQL_PORT', '3306'),",
        "      'USER': os.environ.get('AUTOPOOL_TEST_MYSQL_USER', 'root'),",
        "      'PASSWORD': os.environ.get('AUTOPOOL_TEST_MYSQL_PASSWORD', '')}",
        "settings.configure(DATABASES={'default': db}, INSTALLED_APPS=['autopool'], USE_TZ=True)",
        "django.setup()",
        "import django.db.backends.mysql.base  # 'Did you install mysqlclient?' if the driver is missing",
        "if os.environ.get('AUTOPOOL_TEST_MYSQL_HOST'):",
        "    from django.db import connection",
        "    with connection.cursor() as c:",
        "        c.execute('SELECT 1')",
        "        assert c.fetchone() == (1,)",
        "    connection.close()",
        "    assert autopool.stats('default')[0]['checkouts'] == 1, autopool.stats('default')",
    ]
    commands: list[str] = []
    if "gevent" in extras:
        code.append("import gevent")
    if "gunicorn" in names:
        code.append("import gunicorn.workers.gthread")
        commands.append("gunicorn --version")
    if "gunicorn[gevent]" in {a.lower() for a in args}:
        code.append("import gunicorn.workers.ggevent  # plain gunicorn: No module named 'packaging'")
    if "uvicorn" in names:
        code.append("import uvicorn, uvicorn.workers" if "gunicorn" in names else "import uvicorn")
        commands.append("uvicorn --version")
    if "daphne" in names:
        code.append("import daphne.server")
        commands.append("daphne --help")
    if "uwsgi" in names:
        commands.append("uwsgi --version")
    if "celery" in names:
        code += ["import celery", "import redis" if "celery[redis]" in args else "pass"]
        commands.append("celery --version")
    if "prometheus" in extras:
        code += ["from prometheus_client import CollectorRegistry, generate_latest",
                 "from autopool.contrib import prometheus",
                 "registry = CollectorRegistry()",
                 "prometheus.register(registry)",
                 "assert b'autopool_' in generate_latest(registry) or not os.environ.get('AUTOPOOL_TEST_MYSQL_HOST')"]
    code.append("print('ok')")
    return "\n".join(code), commands


def try_line(where: str, args: list[str], wheel: str, work: Path, index: int) -> tuple[str, float]:
    started = time.monotonic()
    venv = work / f"line{index}"
    shown = " ".join(shlex.quote(a) for a in args)

    def step(cmd: list[str], **kw: object) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
        if proc.returncode:
            raise SystemExit(f"install line FAILED ({where}): pip install {shown}\n$ {' '.join(cmd)}\n"
                             f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")

    step([sys.executable, "-m", "venv", str(venv)])
    step([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
          *with_wheel(args, wheel)])
    code, commands = smoke_code(args)
    step([str(venv / "bin/python"), "-c", code], cwd=str(work))
    for command in commands:
        exe, *rest = command.split()
        step([str(venv / "bin" / exe), *rest])
    return f"pip install {shown}  ({where})", time.monotonic() - started


def main(argv: list[str]) -> int:
    wheel, work = argv[0], Path(argv[1])
    lines = documented_lines()
    started = time.monotonic()
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = [pool.submit(try_line, where, args, wheel, work, i) for i, (where, args) in enumerate(lines)]
        for future in futures:
            shown, took = future.result()
            print(f"install line ok in {took:5.1f} s: {shown}")
    print(f"install lines: {len(lines)} tried, each in a fresh virtualenv, in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
