"""POOL parsing: every seed option, presets, and clear errors for bad input."""
from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from sqlalchemy.pool import NullPool
from sqlalchemy.pool import QueuePool as SAQueuePool

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
    ("reset_on_return", "rollbakc", "'rollback', None, True, False"),
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
    assert config.parse("d", {"reset_on_return": "rollback"}).sa_reset_on_return == "rollback"
    assert config.parse("d", {"reset_on_return": False}).sa_reset_on_return is None
    assert config.parse("d", {"reset_on_return": None}).sa_reset_on_return is None


def test_reset_on_return_commit_is_refused_with_the_reason():
    for setting in ({"reset_on_return": "commit"}, {"preset": "slow_and_safe", "reset_on_return": "commit"}):
        with pytest.raises(ImproperlyConfigured) as info:
            config.parse("main", setting)
        message = str(info.value)
        assert message.startswith("DATABASES['main']['POOL']['reset_on_return']: 'commit' is refused")
        assert "Django rolls back" in message and "commit that work" in message
        assert "'rollback', None, True, False" in message
    with pytest.raises(ImproperlyConfigured, match=r"\['reset_on_return'\]: invalid value 'commmit'"):
        config.parse("main", {"reset_on_return": "commmit"})


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_presets_still_parse(name):
    assert config.parse("d", name).preset == name
    assert config.parse("d", {"preset": name}).sa_reset_on_return in (None, "rollback")


# -- pool classes --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "sqlalchemy.pool.StaticPool", "sqlalchemy.pool.AssertionPool", "sqlalchemy.pool.SingletonThreadPool",
    "sqlalchemy.pool.AsyncAdaptedQueuePool", "sqlalchemy.pool.FallbackAsyncAdaptedQueuePool",
    "sqlalchemy.pool.impl.StaticPool",
])
def test_pool_classes_that_share_a_connection_or_are_async_are_refused(value):
    import sqlalchemy.pool
    from django.utils.module_loading import import_string

    if not hasattr(sqlalchemy.pool, value.rsplit(".", 1)[1]):
        pytest.skip(f"{value} is not in SQLAlchemy {sqlalchemy.__version__}")  # removed in 2.1

    for given in (value, import_string(value)):
        with pytest.raises(ImproperlyConfigured) as info:
            config.parse("main", {"django_pool_class": given})
        message = str(info.value)
        assert message.startswith("DATABASES['main']['POOL']['django_pool_class']: ")
        assert value.rsplit(".", 1)[1] in message and "cannot pool Django's connections" in message
        assert "'autopool.pool.QueuePool'" in message and "'sqlalchemy.pool.NullPool'" in message


def test_subclasses_of_refused_pool_classes_are_refused():
    from sqlalchemy.pool import StaticPool

    class MyStatic(StaticPool):
        pass

    class MyAsync(QueuePool):
        _is_asyncio = True

    for cls in (MyStatic, MyAsync):
        with pytest.raises(ImproperlyConfigured, match="cannot pool Django's connections"):
            config.parse("main", {"django_pool_class": cls})


def test_null_pool_is_accepted():
    assert config.parse("d", {"django_pool_class": "sqlalchemy.pool.NullPool"}).pool_class is NullPool


# -- dialect ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [None, "mysql", "mariadb", "mysql+mysqldb", "MySQL+PyMySQL", "mariadb+pymysql"])
def test_dialect_accepts_none_and_names(value):
    assert config.parse("d", {"dialect": value}).dialect == value


def test_dialect_accepts_a_mysql_dialect_instance():
    from sqlalchemy.dialects.mysql.mysqldb import MySQLDialect_mysqldb

    dialect = MySQLDialect_mysqldb()
    assert config.parse("d", {"dialect": dialect}).dialect is dialect


def _dialects():
    from sqlalchemy.dialects.mysql.asyncmy import MySQLDialect_asyncmy
    from sqlalchemy.dialects.mysql.mariadbconnector import MySQLDialect_mariadbconnector
    from sqlalchemy.dialects.mysql.mysqldb import MySQLDialect_mysqldb
    from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

    return [
        ("postgresql", "unknown dialect 'postgresql'"),
        ("mysql+asyncmy", "unknown dialect 'mysql+asyncmy'"),
        ("mysql+mysqlconnector", "unknown dialect"),
        (42, "got 42"),
        (MySQLDialect_mysqldb, "expected a Dialect instance, got the class MySQLDialect_mysqldb"),
        (MySQLDialect_asyncmy(), "is an asyncio dialect"),
        (SQLiteDialect_pysqlite(), "not a dialect of Django's MySQL drivers"),
        (MySQLDialect_mariadbconnector(), "not a dialect of Django's MySQL drivers"),
    ]


@pytest.mark.parametrize("index", range(8))
def test_dialect_refuses_anything_else_naming_alias_key_and_choices(index):
    value, expected = _dialects()[index]
    with pytest.raises(ImproperlyConfigured) as info:
        config.parse("main", {"dialect": value})
    message = str(info.value)
    assert message.startswith("DATABASES['main']['POOL']['dialect']: ")
    assert expected in message
    assert "'mysql+pymysql'" in message  # the valid choices are named


def test_resolve_dialect_matches_the_driver_in_use():
    from sqlalchemy.dialects.mysql.mysqldb import MySQLDialect_mysqldb
    from sqlalchemy.dialects.mysql.pymysql import MySQLDialect_pymysql

    from autopool.drivers import MySQLclientDriver, PyMySQLDriver

    class Module:
        __name__ = "MySQLdb"
        paramstyle = "format"

    mysqlclient, pymysql = MySQLclientDriver(Module), PyMySQLDriver(Module)
    assert config.resolve_dialect("d", None, mysqlclient) is None
    assert isinstance(config.resolve_dialect("d", "mysql", mysqlclient), MySQLDialect_mysqldb)
    assert isinstance(config.resolve_dialect("d", "mariadb", pymysql), MySQLDialect_pymysql)
    assert isinstance(config.resolve_dialect("d", "mysql+pymysql", pymysql), MySQLDialect_pymysql)
    instance = MySQLDialect_pymysql(dbapi=Module)
    assert config.resolve_dialect("d", instance, pymysql) is instance
    bare = MySQLDialect_pymysql()  # no DB-API module: a copy gets the driver's, the original is untouched
    resolved = config.resolve_dialect("d", bare, pymysql)
    assert type(resolved) is MySQLDialect_pymysql and resolved.dbapi is Module and bare.dbapi is None
    for value, driver, hint in (("mysql+pymysql", mysqlclient, "'mysql+mysqldb'"),
                                ("mariadb+mysqldb", pymysql, "'mysql+pymysql'"),
                                (MySQLDialect_mysqldb(), pymysql, "'mysql+pymysql'")):
        with pytest.raises(ImproperlyConfigured) as info:
            config.resolve_dialect("main", value, driver)
        message = str(info.value)
        assert message.startswith("DATABASES['main']['POOL']['dialect']: ")
        assert f"uses {driver.name} in this process" in message and hint in message


# -- callable options ------------------------------------------------------------------------------

ELASTIC = {"django_pool_class": "autopool.pool.DjangoQueuePool"}


@pytest.mark.parametrize("key, result, expected", [
    ("django_core_pool_size", "5", "returned '5'; expected an integer >= 0 or None"),
    ("django_core_pool_size", 2.5, "returned 2.5; expected an integer >= 0"),
    ("django_unload_timeout", -1, "returned -1; expected a number >= 0"),
    ("django_retire_interval", 0, "returned 0; expected a number > 0"),
    ("django_retire_interval", None, "returned None; expected a number >= 0 (exclusive)"),
    ("django_retire_quantity", True, "returned True; expected an integer >= 0"),
])
def test_a_callable_returning_a_bad_value_fails_at_parse(key, result, expected):
    def option():
        return result

    with pytest.raises(ImproperlyConfigured) as info:
        config.parse("main", dict(ELASTIC, **{key: option}))
    message = str(info.value)
    assert message.startswith(f"DATABASES['main']['POOL'][{key!r}]: the callable ")
    assert "option" in message and expected in message, message


def test_a_callable_that_raises_fails_at_parse_naming_alias_and_key():
    def broken():
        raise KeyError("POOL_CORE")

    with pytest.raises(ImproperlyConfigured) as info:
        config.parse("main", dict(ELASTIC, django_retire_quantity=broken))
    assert str(info.value).startswith("DATABASES['main']['POOL']['django_retire_quantity']: the callable ")
    assert "raised KeyError: 'POOL_CORE'" in str(info.value)


def test_good_callables_parse_and_checked_validates_each_call():
    values = iter([3, 4, "many"])

    def core():
        return next(values)

    cfg = config.parse("main", dict(ELASTIC, django_core_pool_size=core, django_retire_interval=lambda: 0.5))
    assert cfg.django_core_pool_size is core  # evaluated once (3), kept as given
    wrapped = config.checked("main", "django_core_pool_size", core)
    assert config.evaluate(wrapped) == 4
    with pytest.raises(ImproperlyConfigured, match=r"^DATABASES\['main'\]\['POOL'\]\['django_core_pool_size'\]: "
                                                   r"the callable .*core returned 'many'"):
        config.evaluate(wrapped)
    assert config.evaluate_option("main", "django_core_pool_size", 7) == 7


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
