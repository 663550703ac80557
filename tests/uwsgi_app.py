"""The WSGI module tests/test_uwsgi.py serves with a real uWSGI: example_project, plus the documented
uWSGI shutdown recipe (``uwsgi.atexit = autopool.dispose``) executed as the documentation writes it.

``AUTOPOOL_TEST_PRELOAD_QUERY=before|after`` (the recipe): one query while the module loads, as an app that touches the
database at import does. Without ``--lazy-apps`` that runs in the uWSGI master, before it forks
the workers: the master then holds a pooled session that the workers inherit, and whose
``CONNECTION_ID()`` is written to ``AUTOPOOL_TEST_MASTER_CID_FILE``.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (str(ROOT), str(ROOT / "example_project")):
    if path not in sys.path:
        sys.path.insert(0, path)

import autopool  # noqa: E402

autopool.install()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()

from tests.docs_recipes import recipe  # noqa: E402


def _preload_query() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        (cid,) = cursor.fetchone()
    connection.close()  # back to this process's pool: idle, and inherited by forked workers
    Path(os.environ["AUTOPOOL_TEST_MASTER_CID_FILE"]).write_text(f"{os.getpid()} {cid}\n")


# "before": the query runs before the recipe, as in a wsgi.py that ends with it (the documented
# place); "after": after it, so the master keeps its session whatever the recipe does.
PRELOAD = os.environ.get("AUTOPOOL_TEST_PRELOAD_QUERY", "")
if PRELOAD == "before":
    _preload_query()
exec(compile(*recipe("import uwsgi"), "exec"), {"autopool": autopool})
if PRELOAD == "after":
    _preload_query()
