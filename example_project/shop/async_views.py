"""Async views: the ORM's async API under an ASGI server (uvicorn, daphne).

Each awaits the ORM (``aget``, ``acount``, ``async for``) or runs a
transaction in ``sync_to_async``: Django executes those on the request's own
thread, the same one that returns the connection to the pool when the
request finishes.
"""
from asgiref.sync import sync_to_async
from django.db import connection, transaction
from django.http import Http404, JsonResponse

from .models import Item
from .views import MAX_SLEEP_MS


async def item(request, item_id):
    """One row by primary key through ``aget``: one query."""
    try:
        row = await Item.objects.values("id", "name", "value").aget(pk=item_id)
    except Item.DoesNotExist:
        raise Http404(f"no item {item_id}")
    return JsonResponse(row)


async def count(request):
    """``acount()``: one ``SELECT COUNT(*)``."""
    return JsonResponse({"count": await Item.objects.acount()})


async def first_items(request):
    """``async for`` over a queryset: one query, rows streamed to the view."""
    limit = min(max(int(request.GET.get("n", "5")), 1), 100)
    names = [obj.name async for obj in Item.objects.order_by("id")[:limit]]
    return JsonResponse({"names": names})


def _bump(item_id):
    with transaction.atomic():
        obj = Item.objects.select_for_update().get(pk=item_id)
        obj.value += 1
        obj.save(update_fields=["value"])
        return obj.value


async def bump(request, item_id):
    """A read-modify-write in ``transaction.atomic`` inside ``sync_to_async``."""
    try:
        value = await sync_to_async(_bump)(item_id)
    except Item.DoesNotExist:
        raise Http404(f"no item {item_id}")
    return JsonResponse({"id": item_id, "value": value})


def _sleep(ms):
    with connection.cursor() as cursor:
        cursor.execute("SELECT SLEEP(%s)", [ms / 1000])
        cursor.fetchall()


async def sleep(request):
    """``SELECT SLEEP(ms/1000)`` from an async view: holds a connection for that long."""
    try:
        ms = int(request.GET.get("ms", "50"))
    except ValueError:
        ms = 50
    ms = min(max(ms, 0), MAX_SLEEP_MS)
    await sync_to_async(_sleep)(ms)
    return JsonResponse({"slept_ms": ms})


def _connection_id():
    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        return cursor.fetchone()[0]


async def cid(request):
    """The server's ``CONNECTION_ID()`` of the connection this request used."""
    return JsonResponse({"connection_id": await sync_to_async(_connection_id)()})
