"""Views that spend most of their time outside the database (bench/run.py, txmode.py, asgi.py).

"query, 50 ms elsewhere, query": the wait stands for an HTTP call to another
service, a cache or rendering. Under ``gunicorn -k gevent`` ``time.sleep`` is
gevent's, so other requests run meanwhile; with ``POOL["pool_mode"] =
"transaction"`` none of them holds a server connection while it waits.
``async_query_wait_query`` is the same under ASGI: two ``aget()`` calls with
an ``await asyncio.sleep`` between them (bench/asgi.py).
"""
import asyncio
import random
import time

from django.http import JsonResponse

from .models import Item

MAX_WAIT_MS = 10_000
MAX_ID = 10_000  # bench/run.py seeds this many rows


def _wait_ms(request):
    try:
        ms = int(request.GET.get("ms", "50"))
    except ValueError:
        ms = 50
    return min(max(ms, 0), MAX_WAIT_MS)


def query_wait_query(request):
    ms = _wait_ms(request)
    first = Item.objects.values_list("value", flat=True).filter(pk=random.randint(1, MAX_ID)).first()
    time.sleep(ms / 1000)
    second = Item.objects.values_list("value", flat=True).filter(pk=random.randint(1, MAX_ID)).first()
    return JsonResponse({"first": first, "second": second, "waited_ms": ms})


async def async_query_wait_query(request):
    """``?ms=`` the wait (default 50), ``?ids=`` the number of seeded rows (default 10,000)."""
    ms = _wait_ms(request)
    try:
        ids = min(max(int(request.GET.get("ids", MAX_ID)), 1), MAX_ID)
    except ValueError:
        ids = MAX_ID
    rows = Item.objects.values_list("value", flat=True)
    first = await rows.aget(pk=random.randint(1, ids))
    await asyncio.sleep(ms / 1000)
    second = await rows.aget(pk=random.randint(1, ids))
    return JsonResponse({"first": first, "second": second, "waited_ms": ms})
