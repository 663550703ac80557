"""WSGI entry point: ``gunicorn -c gunicorn.conf.py example_project.wsgi``.

``autopool.install()`` runs before Django loads its MySQL backend. Under
gunicorn's gevent worker this module is imported after the worker has
monkey patched the standard library, so the pools autopool creates later
(on the first request) use gevent's locks and wait cooperatively.
"""
import os
import sys
from pathlib import Path

# Run from a checkout: the repository root (with the autopool package) goes on the path.
_ROOT = str(Path(__file__).resolve().parent.parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(1, _ROOT)

import autopool  # noqa: E402

autopool.install()

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
