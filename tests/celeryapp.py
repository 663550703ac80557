"""The Celery app tests/test_celery.py runs a real worker on (``celery -A tests.celeryapp worker``):
Django's example_project with autopool installed, Redis as broker and result backend
(``AUTOPOOL_TEST_BROKER``), and the documented ``worker_process_shutdown`` recipe executed as the
documentation writes it.

``AUTOPOOL_TEST_PRELOAD_QUERY=1``: one query in the worker's main process at ``worker_init``
(before a prefork pool forks its children), its ``CONNECTION_ID()`` written to
``AUTOPOOL_TEST_MASTER_CID_FILE``: the parent then holds a pooled session the children inherit.
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

from celery import Celery  # noqa: E402
from celery.signals import worker_init  # noqa: E402

app = Celery("autopool_test", broker=os.environ["AUTOPOOL_TEST_BROKER"], backend=os.environ["AUTOPOOL_TEST_BROKER"])
app.conf.update(worker_prefetch_multiplier=1, task_acks_late=False, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)

from tests.docs_recipes import recipe  # noqa: E402

RECIPE = recipe("worker_process_shutdown")
# Into this module's globals, as in a real celery.py: Celery holds receivers by weak reference.
exec(compile(*RECIPE, "exec"), globals())
if "worker_shutdown" not in RECIPE[0]:
    # worker_process_shutdown fires only in prefork children; the worker's main process (a gevent,
    # threads or solo pool's only process, a prefork parent) needs worker_shutdown.
    # tests/test_celery.py::test_documented_recipe_covers_the_main_process fails until the
    # documentation's recipe connects it.
    from celery.signals import worker_shutdown

    worker_shutdown.connect(lambda **kwargs: autopool.dispose(), weak=False)


def _one_row(sql, args):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, args)
        return cursor.fetchone()


@app.task(name="tests.celeryapp.item")
def item(item_id):
    """One query: the row, and the session that served it."""
    row = _one_row("SELECT id, name, CONNECTION_ID() FROM shop_item WHERE id = %s", [item_id])
    return {"pid": os.getpid(), "id": row[0], "connection_id": row[2]}


@app.task(name="tests.celeryapp.sleep")
def sleep(ms):
    """One slow query: ``SELECT SLEEP(ms/1000), CONNECTION_ID()``."""
    row = _one_row("SELECT SLEEP(%s), CONNECTION_ID()", [ms / 1000])
    return {"pid": os.getpid(), "connection_id": row[1]}


@worker_init.connect
def _preload_query(**kwargs):
    if os.environ.get("AUTOPOOL_TEST_PRELOAD_QUERY") != "1":
        return
    import django
    from django.db import connection

    django.setup()
    cid = _one_row("SELECT CONNECTION_ID()", [])[0]
    connection.close()  # back to the parent's pool, idle: inherited by the pool's children
    Path(os.environ["AUTOPOOL_TEST_MASTER_CID_FILE"]).write_text(f"{os.getpid()} {cid}\n")
