"""POOL parsing: every seed option, presets, and clear errors for bad input."""
from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from sqlalchemy.pool import NullPool, QueuePool as SAQueuePool

from autopool import config, presets
from autopool.pool import DjangoQueuePool, QueuePool

SEED_KEYS = {
    "django_pool_class", "django_pre_ping", "django_reset_on_return", "django_core_pool_size",
    "django_unload_timeout", "django_retire_interval", "django_retire_quantity", "pool_size",
    "max_overflow", "timeout", "recycle", "dialect", "pre_ping", "use_threadlocal", "reset_on_return",
}


def test_every_seed_option_is_accepted():
    assert SEED_KEYS <= set(config.OPTION_NAMES)
    for preset in (presets.SLOW_AND_SAFE, presets.FAST_AND_SANE, presets.FAST_AND_WILD):
        assert set(preset) <= SEED_KEYS
        config.parse("default", dict(preset))


def test_presets_have_the_seed_values():
    assert presets.FAST_AND_WILD["pool_size"] == 30 and presets.FAST_AND_WILD["django_core_pool_size"] == 5
    assert presets.SLOW_AND_SAFE["recycle"] == 120 and presets.SLOW_AND_SAFE["use_threadlocal"] is True
    assert presets.FAST_AND_SANE["max_overflow"] == 10 and presets.FAST_AND_SANE["recycle"] == 3600


def test_preset_by_name_and_with_overrides():
    wild = config.parse("default", "fast_and_wild")
    assert wild.pool_class is DjangoQueuePool and wild.pool_size == 30 and wild.django_unload_timeout == 2
    sane = config.parse("default", {"preset": "fast_and_sane", "pool_size": 20})
    assert sane.pool_class is QueuePool and sane.pool_size == 20 and sane.max_overflow == 10


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ImproperlyConfigured) as info:
        config.parse("reports", "fast_and_furious")
    message = str(info.value)
    assert "DATABASES['reports']['POOL']['preset']" in message
    for name in ("fast_and_sane", "fast_and_wild", "slow_and_safe"):
        assert name in message


def test_unknown_key_names_alias_key_and_choices():
    with pytest.raises(ImproperlyConfigured) as info:
        config.parse("default", {"pool_sise": 5})
    message = str(info.value)
    assert "DATABASES['default']['POOL']['pool_sise']" in message
    assert "did you mean 'pool_size'" in message
    assert "max_overflow" in message  # the valid options are listed


@pytest.mark.parametrize("key,value,expect", [
    ("pool_size", 0, "integer >= 1"),
    ("pool_size", "5", "integer >= 1"),
    ("pool_size", True, "integer >= 1"),
    ("max_overflow", -2, "integer >= -1"),
    ("timeout", -1, "number >= 0"),
    ("recycle", -5, "or -1: never"),
    ("max_waiting", 1.5, "integer >= 0"),
    ("reset_on_return", "rollbakc", "'rollback', 'commit', None"),
    ("cooperative", "yes", "'auto', True, False"),
    ("pre_ping", 1, "True, False"),
    ("django_pool_class", "no.such.Pool", "cannot import"),
    ("django_pool_class", dict, "Pool subclass"),
])
def test_bad_values_are_clear_errors(key, value, expect):
    with pytest.raises(ImproperlyConfigured) as info:
        config.parse("default", {key: value})
    message = str(info.value)
    assert f"DATABASES['default']['POOL'][{key!r}]" in message
    assert expect in message


def test_not_a_dict():
    with pytest.raises(ImproperlyConfigured, match="dict of options or a preset name"):
        config.parse("default", 5)


def test_elastic_options_need_the_elastic_pool():
    with pytest.raises(ImproperlyConfigured) as info:
        config.parse("default", {"django_core_pool_size": 2})
    assert "only applies to autopool.pool.DjangoQueuePool" in str(info.value)


def test_pool_class_mapping():
    assert config.parse("d", {"django_pool_class": SAQueuePool}).pool_class is QueuePool
    assert config.parse("d", {"django_pool_class": "sqlalchemy.pool.QueuePool"}).pool_class is QueuePool
    assert config.parse("d", {"django_pool_class": "DjangoQueuePool"}).pool_class is DjangoQueuePool
    assert config.parse("d", {"django_pool_class": "django_db_conn_pool.mysqlalchemy.pool.DjangoQueuePool"}
                        ).pool_class is DjangoQueuePool
    assert config.parse("d", {"django_pool_class": "autopool.pool.DjangoQueuePool"}).pool_class is DjangoQueuePool
    assert config.parse("d", {"django_pool_class": NullPool}).pool_class is NullPool


def test_reset_on_return_mapping():
    assert config.parse("d", {"reset_on_return": True}).sa_reset_on_return == "rollback"
    assert config.parse("d", {"reset_on_return": "commit"}).sa_reset_on_return == "commit"
    assert config.parse("d", {"reset_on_return": False}).sa_reset_on_return is None


def test_environment_switch_wins(monkeypatch):
    class S:
        AUTOPOOL_ENABLED = True

    monkeypatch.setenv("AUTOPOOL_ENABLED", "off")
    assert config.enabled(S) is False
    monkeypatch.setenv("AUTOPOOL_ENABLED", "1")
    S.AUTOPOOL_ENABLED = False
    assert config.enabled(S) is True
    monkeypatch.delenv("AUTOPOOL_ENABLED")
    assert config.enabled(S) is False
