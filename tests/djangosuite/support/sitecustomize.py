"""Loaded at start-up by every Python process of a ``tests/djangosuite/run.py`` run.

``run.py`` puts this directory first on ``PYTHONPATH``, so the runner, each
``--parallel`` worker (forked or spawned) and every subprocess a Django test
starts (``django-admin``, ``manage.py``) select the driver and install
autopool before Django's MySQL backend is imported. ``site`` only prints an
exception raised here and carries on, so ``autopool_djangosuite_runner``
checks again that the driver and autopool are in place and stops the run if not.
"""
import os
import sys

_mode = os.environ.get("AUTOPOOL_DJANGOSUITE_MODE")
if _mode:
    if os.environ.get("AUTOPOOL_DJANGOSUITE_DRIVER") == "pymysql":
        import pymysql

        pymysql.install_as_MySQLdb()
    if _mode == "autopool":
        try:
            import autopool
        except ImportError:
            # Not installed in this interpreter: use the checkout run.py belongs to.
            sys.path.append(os.environ["AUTOPOOL_DJANGOSUITE_SRC"])
            import autopool
        autopool.install()
