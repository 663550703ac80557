"""The example's views: each one is a typical single-query request."""
import os

from django.conf import settings
from django.db import connection
from django.http import Http404, JsonResponse

import autopool

from .models import Item

MAX_SLEEP_MS = 10_000


def item(request, item_id):
    """One row by primary key: one query."""
    try:
        row = Item.objects.values("id", "name", "value").get(pk=item_id)
    except Item.DoesNotExist:
        raise Http404(f"no item {item_id}")
    return JsonResponse(row)


def sleep(request):
    """``SELECT SLEEP(ms/1000)`` in the database: a slow query that holds a connection."""
    try:
        ms = int(request.GET.get("ms", "50"))
    except ValueError:
        ms = 50
    ms = min(max(ms, 0), MAX_SLEEP_MS)
    with connection.cursor() as cursor:
        cursor.execute("SELECT SLEEP(%s), CONNECTION_ID()", [ms / 1000])
        ((_, connection_id),) = cursor.fetchall()
    return JsonResponse({"slept_ms": ms, "connection_id": connection_id, "pid": os.getpid()})


def cid(request):
    """The server's ``CONNECTION_ID()`` of the connection this request used."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        (connection_id,) = cursor.fetchone()
    return JsonResponse({"connection_id": connection_id, "pid": os.getpid()})


def stats(request):
    """``autopool.stats()`` of this worker process (no database access)."""
    return JsonResponse({"mode": settings.MODE, "driver": settings.DRIVER, "pid": os.getpid(),
                         "pools": autopool.stats()})


def health(request):
    """Readiness probe without a database round trip."""
    return JsonResponse({"ok": True})

