"""The Python and settings examples of README.rst and docs/*.rst, run for real.

``python -m tests.readme_examples NAME`` runs one example in a fresh process
against the test server (``AUTOPOOL_TEST_MYSQL_*``) and prints a JSON result
that ``test_readme_examples`` checks. The examples are read from README.rst
and the documentation's pages themselves (``sources()``); a settings example's connection parameters are pointed at the test
server (its hosts list: the test server first, then addresses nothing listens
on), everything else runs as written.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.scenario_main import main

README = Path(__file__).resolve().parent.parent / "README.rst"
DOCS = README.parent / "docs"
DB = "autopool_readme"

# Which example is which: a text that only that block contains.
MARKERS: dict[str, str] = {
    "quickstart_settings": "# settings.py: ENGINE stays the stock one",
    "pymysql_settings": "# settings.py, first lines: PyMySQL stands in",
    "logging": "LOGGING = {",
    "prometheus": "prometheus.register(registry=my_registry",
    "gunicorn_metrics": "def post_worker_init(worker):",
    "gunicorn_shutdown": "def worker_exit(server, worker):",
    "uwsgi": "import uwsgi",
    "celery": "from celery.signals import",
    "multi_host": '"host_policy": "failover"',
    "replicas": "autopool.routers.ReplicaRouter",
    "migrate_seed_before": "# Before: settings.py for django-db-conn-pool",
    "migrate_seed_after": "# After: settings.py for autopool, the same POOL",
    "migrate_dbcp_before": "# Before: settings.py for django-db-connection-pool",
    "migrate_dbcp_after": "# After: settings.py for autopool (what from_dj_db_conn_pool returns)",
    "transaction_mode": "# Transaction mode: settings.py, and a stretch that needs one session",
}


def blocks(text: str) -> list[tuple[str, int, str]]:
    """Every literal block of an RST text: (kind, line, dedented source).

    ``kind`` is the ``code-block`` language, or ``"literal"`` for a ``::`` block.
    """
    lines = text.split("\n")
    found = []
    i = 0
    while i < len(lines):
        line = lines[i]
        match = re.match(r"\.\. code-block:: *(\S+)", line.strip())
        if match:
            kind = match.group(1)
        elif line.rstrip().endswith("::") and not line.lstrip().startswith(".. "):
            kind = "literal"
        else:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j == len(lines):
            break
        indent = len(lines[j]) - len(lines[j].lstrip())
        if indent <= len(line) - len(line.lstrip()):
            i += 1
            continue
        k = j
        while k < len(lines) and (not lines[k].strip() or len(lines[k]) - len(lines[k].lstrip()) >= indent):
            k += 1
        found.append((kind, i + 1, "\n".join(ln[indent:] for ln in lines[j:k]).strip("\n") + "\n"))
        i = k
    return found


def python_examples(text: str) -> dict[str, str]:
    """The README's ``code-block:: python`` blocks by name (``MARKERS``)."""
    out: dict[str, str] = {}
    for kind, line, source in blocks(text):
        if kind != "python":
            continue
        names = [name for name, marker in MARKERS.items() if marker in source]
        if len(names) != 1:
            raise LookupError(f"README.rst line {line}: a Python example that matches {names or 'no'} "
                              f"name in tests/readme_examples.py MARKERS; give it exactly one")
        if names[0] in out:
            raise LookupError(f"README.rst line {line}: a second {names[0]!r} example")
        out[names[0]] = source
    return out


def sources() -> list[Path]:
    """README.rst and every page of docs/: all their examples run."""
    return [README, *sorted(DOCS.glob("*.rst"))]


def all_python_examples() -> dict[str, str]:
    """Every named example of every source (a name used twice is an error)."""
    out: dict[str, str] = {}
    for path in sources():
        for name, source in python_examples(path.read_text(encoding="utf-8")).items():
            if name in out:
                raise LookupError(f"{path.name}: a second {name!r} example")
            out[name] = source
    return out


def example(name: str) -> str:
    return all_python_examples()[name]


# -- running settings ----------------------------------------------------------

def server() -> Any:
    from tests.mariadb import Server

    return Server.from_env_or_start()


def exec_example(name: str, namespace: dict[str, Any] = None) -> dict[str, Any]:
    namespace = {} if namespace is None else namespace
    exec(compile(example(name), f"README.rst ({name})", "exec"), namespace)
    return namespace


def localize(databases: dict[str, dict[str, Any]], srv: Any) -> dict[str, dict[str, Any]]:
    """The example's DATABASES, each alias pointed at the test server."""
    out = {}
    for alias, db in databases.items():
        db = dict(db, HOST=srv.host, PORT=str(srv.port), USER=srv.user, PASSWORD=srv.password, NAME=DB)
        pool = db.get("POOL")
        if isinstance(pool, dict) and pool.get("hosts"):
            # The live server first, then ports where nothing listens (connection refused at once).
            dead = [f"127.0.0.1:{port}" for port in range(1, len(pool["hosts"]))]
            db["POOL"] = dict(pool, hosts=[f"{srv.host}:{srv.port}"] + dead)
        out[alias] = db
    return out


def setup_django(databases: dict[str, dict[str, Any]], **settings_kw: Any) -> None:
    import django
    from django.conf import settings

    from tests import djsettings

    djsettings.use_driver()
    srv = server()
    srv.create_database(DB)
    apps = [app for app in settings_kw.pop("INSTALLED_APPS", []) if app is not Ellipsis]
    settings.configure(
        DATABASES=localize(databases, srv), INSTALLED_APPS=["django.contrib.contenttypes"] + apps,
        USE_TZ=True, SECRET_KEY="readme", DEFAULT_AUTO_FIELD="django.db.models.AutoField", **settings_kw)
    django.setup()


def query_every_alias() -> dict[str, Any]:
    """One query on every alias; then each pooled alias's pool as ``autopool.stats()`` sees it."""
    from django.db import connections

    import autopool

    out: dict[str, Any] = {}
    for alias in connections:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        connections[alias].close()
        stats = autopool.stats(alias)
        out[alias] = {key: stats[0][key] for key in ("pool_size", "max_overflow", "timeout", "recycle",
                                                      "checkouts", "idle", "checked_out")} if stats else None
    return out


def system_checks() -> list[str]:
    from django.core import checks

    return [f"{m.id}: {m.msg}" for m in checks.run_checks() if m.level >= checks.WARNING]


# -- the examples ---------------------------------------------------------------

def scenario_quickstart(params: dict[str, Any]) -> dict[str, Any]:
    """The settings alone (the app installs autopool as Django sets up): a pooled query, the checks."""
    import autopool

    before = autopool.is_installed()
    ns = exec_example("quickstart_settings")
    setup_django(ns["DATABASES"], INSTALLED_APPS=ns["INSTALLED_APPS"])
    return {"installed_before": before, "installed": autopool.is_installed(), "aliases": query_every_alias(),
            "checks": system_checks(), "autopool_app": "autopool" in ns["INSTALLED_APPS"]}


def scenario_transaction_mode(params: dict[str, Any]) -> dict[str, Any]:
    """The transaction-mode page's example: statements outside the pin give the connection back;
    inside ``pinned()`` they share one session (the lock taken is released on the same one)."""
    import autopool

    autopool.install()
    source = example("transaction_mode")
    settings_part, _, code_part = source.partition("# in a view or a task:")
    ns: dict[str, Any] = {}
    exec(compile(settings_part, "docs/transaction-mode.rst (settings)", "exec"), ns)
    setup_django(ns["DATABASES"])
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    parked = connection.connection is None
    idle_after_statement = autopool.stats("default")[0]["checked_out"]
    statements: list[Any] = []
    real_execute = connection.cursor().__class__.execute

    def recording(self: Any, sql: Any, params: Any = None) -> Any:
        result = real_execute(self, sql, params)
        statements.append((sql, self.fetchone()))
        return result

    connection.cursor().__class__.execute = recording
    try:
        exec(compile(code_part, "docs/transaction-mode.rst (code)", "exec"), {})
    finally:
        connection.cursor().__class__.execute = real_execute
    with connection.cursor() as cursor:
        cursor.execute("SELECT IS_FREE_LOCK('nightly-report')")
        free_after = cursor.fetchone()[0]
    return {"parked": parked, "checked_out_between_statements": idle_after_statement,
            "statements": [[sql, list(row) if row else None] for sql, row in statements],
            "lock_free_after": free_after, "checked_out_after": autopool.stats("default")[0]["checked_out"]}


def scenario_pymysql_settings(params: dict[str, Any]) -> dict[str, Any]:
    """settings.py's first lines make PyMySQL Django's MySQLdb; a pooled query then runs on it."""
    import autopool

    exec_example("pymysql_settings")
    import MySQLdb

    autopool.install()
    setup_django({"default": {"ENGINE": "django.db.backends.mysql", "POOL": {"pool_size": 2}}})
    return {"mysqldb": MySQLdb.__name__, "aliases": query_every_alias(),
            "driver": autopool.stats("default")[0]["driver"]}


def scenario_logging(params: dict[str, Any]) -> dict[str, Any]:
    """The LOGGING example sends autopool's INFO records to stderr (the test reads them)."""
    import autopool

    autopool.install()
    ns = exec_example("logging")
    setup_django({"default": {"ENGINE": "django.db.backends.mysql", "POOL": {"pool_size": 2}}},
                 LOGGING=ns["LOGGING"])
    return {"aliases": query_every_alias()}


def scenario_prometheus(params: dict[str, Any]) -> dict[str, Any]:
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

    import autopool

    autopool.install()
    setup_django({"default": {"ENGINE": "django.db.backends.mysql", "POOL": {"pool_size": 3}}})
    query_every_alias()
    mine = CollectorRegistry()
    exec_example("prometheus", {"my_registry": mine})
    return {"global": generate_latest(REGISTRY).decode(), "mine": generate_latest(mine).decode()}


class _Cfg:
    workers = 2


class _Worker:
    cfg = _Cfg()


def _idle_and_sessions() -> tuple[int, int]:
    import autopool

    srv = server()
    sessions = srv.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s", [DB])[0][0]
    return sum(s["idle"] for s in autopool.stats()), int(sessions)


def _open_pool() -> None:
    import autopool

    autopool.install()
    setup_django({"default": {"ENGINE": "django.db.backends.mysql", "POOL": {"pool_size": 4}}})
    query_every_alias()


def scenario_gunicorn_shutdown(params: dict[str, Any]) -> dict[str, Any]:
    _open_pool()
    ns = exec_example("gunicorn_shutdown")
    before = _idle_and_sessions()
    ns["worker_exit"](None, _Worker())
    after_exit = _idle_and_sessions()
    query_every_alias()  # with --preload, the master would have opened a pool like this one
    before_fork = _idle_and_sessions()
    ns["pre_fork"](None, _Worker())
    return {"before": before, "after_worker_exit": after_exit, "before_pre_fork": before_fork,
            "after_pre_fork": _idle_and_sessions()}


# The uWSGI and Celery recipes run inside a real uWSGI server and a real Celery worker:
# tests/uwsgi_app.py and tests/celeryapp.py execute them as documented (tests/test_uwsgi.py,
# tests/test_celery.py).


def scenario_multi_host(params: dict[str, Any]) -> dict[str, Any]:
    import autopool

    autopool.install()
    ns = exec_example("multi_host")
    setup_django(ns["DATABASES"])
    from django.db import connections

    from autopool import hosts

    out = {"aliases": query_every_alias(),
           "hosts_status": [[h["port"], h["up"], h["idle"], h["checked_out"]] for h in hosts.status("default")]}
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT @@port")
        out["served_by_port"] = cursor.fetchone()[0]
    connections["default"].close()
    return out


def scenario_replicas(params: dict[str, Any]) -> dict[str, Any]:
    import autopool

    autopool.install()
    ns = exec_example("replicas")
    setup_django(ns["DATABASES"], DATABASE_ROUTERS=ns["DATABASE_ROUTERS"])
    from django.contrib.contenttypes.models import ContentType
    from django.db import router

    from autopool import routers

    aliases = query_every_alias()
    routers.monitor().housekeep()  # the lag check the housekeeping task runs every second
    return {"aliases": aliases, "read": router.db_for_read(ContentType), "write": router.db_for_write(ContentType),
            "status": routers.status()}



def scenario_migrate(params: dict[str, Any]) -> dict[str, Any]:
    """A migration guide's before and after: the helper turns one into the other, and the
    after settings run, with the pool the before settings asked for."""
    import autopool
    from autopool.compat import from_dj_db_conn_pool

    before = exec_example(f"migrate_{params['library']}_before")["DATABASES"]
    after = exec_example(f"migrate_{params['library']}_after")["DATABASES"]
    autopool.install()
    setup_django(after)
    stats = autopool.stats  # after the query below
    aliases = query_every_alias()
    return {"converted_equals_after": from_dj_db_conn_pool(before) == after, "before": before,
            "aliases": aliases, "pool_class": stats("default")[0]["pool_class"],
            "core_size": stats("default")[0]["core_size"]}


if __name__ == "__main__":
    main(globals())
