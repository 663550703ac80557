"""Django app for autopool's management command and system checks.

Add ``"autopool"`` to ``INSTALLED_APPS`` for ``manage.py autopool`` and the
``autopool.*`` system checks. Pooling itself does not need the app: it starts
with ``autopool.install()``, which must run before requests do.
"""
from __future__ import annotations

from django.apps import AppConfig


class AutopoolConfig(AppConfig):
    name = "autopool"
    label = "autopool"
    verbose_name = "autopool connection pools"

    def ready(self) -> None:
        from django.core import checks

        from .checks import TAG, check_fleet, check_pools

        checks.register(check_pools, TAG)
        # Connects: returns nothing unless database checks were asked for (``check --database``).
        checks.register(check_fleet, TAG)
