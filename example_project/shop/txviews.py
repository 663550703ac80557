"""A view that spends most of its time outside the database (bench/txmode.py).

"query, 50 ms elsewhere, query": the wait stands for an HTTP call to another
service, a cache or rendering. Under ``gunicorn -k gevent`` ``time.sleep`` is
gevent's, so other requests run meanwhile; with ``POOL["pool_mode"] =
"transaction"`` none of them holds a server connection while it waits.
"""
import random
import time

from django.http import JsonResponse

from .models import Item

MAX_WAIT_MS = 10_000
MAX_ID = 10_000  # bench/run.py seeds this many rows


def query_wait_query(request):
    try:
        ms = int(request.GET.get("ms", "50"))
    except ValueError:
        ms = 50
    ms = min(max(ms, 0), MAX_WAIT_MS)
    first = Item.objects.values_list("value", flat=True).filter(pk=random.randint(1, MAX_ID)).first()
    time.sleep(ms / 1000)
    second = Item.objects.values_list("value", flat=True).filter(pk=random.randint(1, MAX_ID)).first()
    return JsonResponse({"first": first, "second": second, "waited_ms": ms})
