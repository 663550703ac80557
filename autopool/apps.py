"""The ``autopool`` Django app: required in ``INSTALLED_APPS``.

Its ``ready()`` runs in every process that calls ``django.setup()`` (WSGI and
ASGI servers, Celery workers, management commands), so it is where autopool
makes sure it is active and says loudly what is wrong:

* it calls ``autopool.install()`` (idempotent, and it works after Django has
  loaded the MySQL backend), so no entry point can forget it; set
  ``AUTOPOOL_AUTO_INSTALL = False`` to call ``install()`` yourself;
* it warns, once per process, about settings that leave a pooled alias
  unpooled or pooled badly (``autopool.advice``);
* it registers the ``autopool.*`` system checks and ``manage.py autopool``.
"""

from __future__ import annotations

from django.apps import AppConfig


class AutopoolConfig(AppConfig):
    name = "autopool"
    label = "autopool"
    verbose_name = "autopool connection pools"

    def ready(self) -> None:
        from django.core import checks

        from . import advice
        from .checks import TAG, check_asgi, check_fleet, check_pools
        from .patch import install

        if advice.auto_install():
            install()
        checks.register(check_pools, TAG)
        checks.register(check_asgi, TAG)  # W020: persistent, unpooled MySQL under ASGI
        checks.register(advice.check_leftovers, TAG)
        # Connects: returns nothing unless database checks were asked for (``check --database``).
        checks.register(check_fleet, TAG)
        advice.startup()
