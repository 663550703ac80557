"""Migration from the two predecessor libraries gives the same pool sizes."""
from __future__ import annotations

from sqlalchemy.pool import QueuePool as SAQueuePool

from autopool import config
from autopool.compat import from_dj_db_conn_pool
from autopool.pool import DjangoQueuePool, QueuePool


def test_django_db_connection_pool_settings():
    old = {"default": {"ENGINE": "dj_db_conn_pool.backends.mysql", "NAME": "app",
                       "POOL_OPTIONS": {"POOL_SIZE": 10, "MAX_OVERFLOW": 10, "RECYCLE": 24 * 60 * 60,
                                        "TIMEOUT": 20, "PRE_PING": True}},
           "logs": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}}
    new = from_dj_db_conn_pool(old)
    assert new["default"]["ENGINE"] == "django.db.backends.mysql"
    assert "POOL_OPTIONS" not in new["default"]
    cfg = config.parse("default", new["default"]["POOL"])
    assert (cfg.pool_size, cfg.max_overflow, cfg.recycle, cfg.timeout, cfg.pre_ping) == (10, 10, 86400, 20, True)
    assert cfg.pool_class is QueuePool
    assert new["logs"] == old["logs"]
    assert old["default"]["ENGINE"] == "dj_db_conn_pool.backends.mysql"  # input untouched


def test_seed_settings_keep_their_pool_dict():
    seed_pool = {"django_pool_class": SAQueuePool, "django_pre_ping": True, "django_reset_on_return": False,
                 "pool_size": 5, "max_overflow": 0, "timeout": 30, "recycle": 120, "dialect": None,
                 "pre_ping": False, "use_threadlocal": True, "reset_on_return": "rollback"}
    old = {"default": {"ENGINE": "django_db_conn_pool.mysqlalchemy", "CONN_MAX_AGE": 0, "POOL": seed_pool}}
    new = from_dj_db_conn_pool(old)
    assert new["default"]["ENGINE"] == "django.db.backends.mysql"
    cfg = config.parse("default", new["default"]["POOL"])
    assert (cfg.pool_size, cfg.max_overflow, cfg.timeout, cfg.recycle) == (5, 0, 30, 120)
    wild = config.parse("default", {"django_pool_class": "django_db_conn_pool.mysqlalchemy.pool.DjangoQueuePool",
                                    "pool_size": 30, "max_overflow": 0, "django_core_pool_size": 5})
    assert wild.pool_class is DjangoQueuePool and wild.pool_size == 30


def test_an_unmappable_option_is_a_clear_error():
    import pytest
    from django.core.exceptions import ImproperlyConfigured

    old = {"default": {"ENGINE": "dj_db_conn_pool.backends.mysql", "POOL_OPTIONS": {"POOL_SIZ": 10}}}
    with pytest.raises(ImproperlyConfigured, match=r"DATABASES\['default'\]\['POOL_OPTIONS'\]\['POOL_SIZ'\].*POOL_SIZE"):
        from_dj_db_conn_pool(old)
