"""ASGI entry point: ``uvicorn example_project.asgi:application`` or
``daphne example_project.asgi:application``.

``autopool.install()`` runs before Django loads its MySQL backend, as in
``wsgi.py``. Under ASGI, Django runs each request's sync code (sync views,
and the async ORM's ``sync_to_async`` calls) on one thread per request and
fires ``request_finished`` there, so with ``CONN_MAX_AGE = 0`` the connection
goes back to the pool at the end of every request, async views included.

Closing the pool at shutdown, so the database server's sessions end cleanly
instead of as aborted connections: servers that speak the ASGI lifespan
protocol (uvicorn, hypercorn) send ``lifespan.shutdown`` after the last
request, which Django's own handler does not answer, so ``application`` below
answers it and disposes there (uvicorn then re-raises the SIGTERM it caught,
and ``atexit`` handlers do not run). daphne has no lifespan: ``atexit`` covers
it (it exits normally on SIGTERM).
"""
import atexit
import os
import sys
from pathlib import Path

# Run from a checkout: the repository root (with the autopool package) goes on the path.
_ROOT = str(Path(__file__).resolve().parent.parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(1, _ROOT)

import autopool  # noqa: E402

autopool.install()
atexit.register(autopool.dispose)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()


async def application(scope, receive, send):
    if scope["type"] != "lifespan":
        return await django_application(scope, receive, send)
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            autopool.dispose()  # after the last request: idle connections only, closed at once
            await send({"type": "lifespan.shutdown.complete"})
            return
