"""autopool's Django system checks: in process on explicit settings, and through ``manage.py check``."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from tests.mariadb import Server
from tests.test_observability import WRONG_PASSWORD, db_settings, ensure_django, manage, obs_server, project

__all__ = ["obs_server", "project"]  # fixtures shared with test_observability


@pytest.fixture(autouse=True)
def _django(monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_django()
    monkeypatch.delenv("AUTOPOOL_ENABLED", raising=False)


def ids(messages: list[Any]) -> list[str]:
    return sorted(m.id for m in messages)


def run(databases: dict[str, Any], installed: bool = True, enabled: bool = True) -> list[Any]:
    from autopool.checks import check_databases

    return check_databases(databases, installed=installed, enabled=enabled)


@pytest.mark.parametrize("pool", [
    {"pool_size": 0},
    {"max_overflw": 3},
    {"preset": "fast_and_furious"},
    {"django_pool_class": "no.such.Pool"},
    {"django_core_pool_size": 2},
    {"timeout": "soon"},
    42,
])
def test_invalid_pool_is_an_error_with_parse_message(obs_server: Server, pool: Any) -> None:
    from autopool import config

    with pytest.raises(ImproperlyConfigured) as info:
        config.parse("main", pool)
    [message] = run({"main": db_settings(obs_server, POOL=pool)})
    assert message.id == "autopool.E001" and message.is_serious()
    assert message.msg == str(info.value)
    assert message.obj == "DATABASES['main']"
    assert obs_server.password not in str(message)


def test_valid_settings_give_no_message(obs_server: Server) -> None:
    dbs = {"default": db_settings(obs_server, POOL={"pool_size": 3}),
           "preset": db_settings(obs_server, POOL="fast_and_wild", CONN_MAX_AGE=0),
           "unpooled": db_settings(obs_server, CONN_MAX_AGE=600),
           "sqlite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
    assert run(dbs) == []
    assert run({"unpooled": db_settings(obs_server, CONN_MAX_AGE=None)}, installed=False) == []


def test_not_installed_warns_where_to_install(obs_server: Server) -> None:
    dbs = {"default": db_settings(obs_server, POOL={}), "replica": db_settings(obs_server, POOL="fast_and_sane"),
           "plain": db_settings(obs_server)}
    [message] = run(dbs, installed=False)
    assert message.id == "autopool.W001" and not message.is_serious()
    assert "'default', 'replica'" in message.msg and "'plain'" not in message.msg
    assert "autopool.install()" in message.msg
    for where in ("manage.py", "wsgi.py", "celery.py", "AUTOPOOL_AUTO_INSTALL = False"):
        assert where in message.hint


@pytest.mark.parametrize("max_age", [60, None])
def test_conn_max_age_on_pooled_alias_warns(obs_server: Server, max_age: Any) -> None:
    [message] = run({"default": db_settings(obs_server, POOL={}, CONN_MAX_AGE=max_age)})
    assert message.id == "autopool.W002" and message.obj == "DATABASES['default']"
    assert f"CONN_MAX_AGE={max_age!r}" in message.msg
    assert "per-thread" in message.msg and "greenlet" in message.msg and "pool" in message.msg
    assert "CONN_MAX_AGE to 0" in message.hint


def test_disabled_is_info_only(obs_server: Server) -> None:
    dbs = {"default": db_settings(obs_server, POOL={}, CONN_MAX_AGE=60),
           "broken": db_settings(obs_server, POOL={"pool_size": -1})}
    messages = run(dbs, installed=False, enabled=False)
    # Still an error: it would fail as soon as pooling is turned back on.
    assert ids(messages) == ["autopool.E001", "autopool.I001"]
    info = next(m for m in messages if m.id == "autopool.I001")
    assert "'default', 'broken'" in info.msg and "settings.AUTOPOOL_ENABLED" in info.msg


def test_pool_on_other_backend_warns(obs_server: Server) -> None:
    dbs = {"default": db_settings(obs_server, POOL={}),
           "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:", "POOL": {}}}
    messages = run(dbs, installed=False)
    assert ids(messages) == ["autopool.W001", "autopool.W003"]
    w003 = next(m for m in messages if m.id == "autopool.W003")
    assert "'django.db.backends.sqlite3' ignores it" in w003.msg
    w001 = next(m for m in messages if m.id == "autopool.W001")
    assert "'lite'" not in w001.msg


def test_registered_check_reads_settings(obs_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import django.core.checks as checks_module
    from django.apps import apps
    from django.core.checks.registry import CheckRegistry
    from django.test.utils import override_settings

    import autopool
    from autopool.apps import AutopoolConfig
    from autopool.checks import TAG, check_pools

    # ready() registers the check (into a private registry here, not the process-wide one).
    private = CheckRegistry()
    monkeypatch.setattr(checks_module, "register", private.register)
    AutopoolConfig("autopool", autopool).ready()
    assert check_pools in private.get_checks() and private.tags_available() == {TAG}
    if apps.is_installed("autopool"):
        from django.core.checks.registry import registry

        assert check_pools in registry.get_checks()

    dbs = {"default": db_settings(obs_server, POOL={"pool_size": 2}, CONN_MAX_AGE=5)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Overriding setting DATABASES can lead to unexpected behavior"
        with override_settings(DATABASES=dbs):
            found = ids(private.run_checks(tags=[TAG]))
            assert ("autopool.W001" in found) == (not autopool.is_installed())
            assert "autopool.W002" in found
        with override_settings(DATABASES=dbs, AUTOPOOL_ENABLED=False):
            found = private.run_checks(tags=[TAG])
            assert ids(found) == ["autopool.I001"] and "settings.AUTOPOOL_ENABLED" in found[0].msg
            monkeypatch.setenv("AUTOPOOL_ENABLED", "1")
            assert "autopool.I001" not in ids(private.run_checks(tags=[TAG]))
            monkeypatch.setenv("AUTOPOOL_ENABLED", "off")
            found = private.run_checks(tags=[TAG])
            assert "environment variable" in found[-1].msg


# -- manage.py check in a real project ----------------------------------------------------------

def check(project: Path, dbs: dict[str, Any], *args: str, **kw: Any) -> Any:
    result = manage(project, "check", *args, databases=dbs, **kw)
    result.output = result.stdout + result.stderr
    return result


def test_manage_py_check(project: Path, obs_server: Server) -> None:
    good = {"default": db_settings(obs_server, POOL={"pool_size": 2})}
    result = check(project, good)
    assert result.returncode == 0 and "System check identified no issues" in result.output

    result = check(project, good, install=False)
    assert result.returncode == 0, result.output
    assert "(autopool.W001)" in result.output and "autopool.install()" in result.output
    result = check(project, good, "--fail-level", "WARNING", install=False)
    assert result.returncode == 1

    aged = {"default": db_settings(obs_server, POOL={}, CONN_MAX_AGE=60),
            "replica": db_settings(obs_server, PASSWORD=WRONG_PASSWORD, POOL={"pool_size": "ten"})}
    result = check(project, aged, "--tag", "autopool")
    assert result.returncode == 1  # the error stops it
    assert "DATABASES['replica']: (autopool.E001) DATABASES['replica']['POOL']['pool_size']: expected an " \
           "integer >= 1, got 'ten'" in result.output
    assert "DATABASES['default']: (autopool.W002) DATABASES['default'] sets CONN_MAX_AGE=60 on a pooled alias" in result.output
    for secret in (obs_server.password, WRONG_PASSWORD):
        assert secret not in result.output

    result = check(project, aged, "--tag", "autopool", env={"AUTOPOOL_ENABLED": "0"})
    assert "(autopool.I001)" in result.output and "(autopool.W002)" not in result.output
    assert "AUTOPOOL_ENABLED environment variable" in result.output


# -- values checked where the user sees them (issue 16, point 7) ---------------------------------

def _core_of_ten() -> str:
    return "ten"


@pytest.mark.parametrize("pool, expected", [
    ({"reset_on_return": "commit"}, "['reset_on_return']: 'commit' is refused"),
    ({"django_pool_class": "sqlalchemy.pool.StaticPool"}, "['django_pool_class']: sqlalchemy.pool.StaticPool cannot"),
    ({"django_pool_class": "sqlalchemy.pool.AssertionPool"}, "AssertionPool cannot pool Django's connections"),
    ({"dialect": "postgresql"}, "['dialect']: unknown dialect 'postgresql'"),
    ({"django_pool_class": "autopool.pool.DjangoQueuePool", "django_core_pool_size": _core_of_ten},
     "['django_core_pool_size']: the callable _core_of_ten returned 'ten'"),
])
def test_bad_values_are_e001_naming_alias_and_key(obs_server: Server, pool: Any, expected: str) -> None:
    [message] = run({"main": db_settings(obs_server, POOL=pool)})
    assert message.id == "autopool.E001" and message.is_serious()
    assert message.msg.startswith("DATABASES['main']['POOL']")
    assert expected in message.msg, message.msg


def test_a_dialect_for_the_other_driver_is_e001(obs_server: Server) -> None:
    from django.db.backends.mysql.base import Database

    from autopool.drivers import for_module

    other = "mysql+pymysql" if for_module(Database).name == "mysqlclient" else "mysql+mysqldb"
    [message] = run({"main": db_settings(obs_server, POOL={"dialect": other})})
    assert message.id == "autopool.E001"
    assert message.msg.startswith(f"DATABASES['main']['POOL']['dialect']: {other!r} is for ")
    assert run({"main": db_settings(obs_server, POOL={"dialect": "mysql"})}) == []


@pytest.mark.parametrize("driver", ["mysqlclient", "pymysql"])
def test_manage_py_check_shows_refused_values(project: Path, obs_server: Server, driver: str) -> None:
    other = "mysql+pymysql" if driver == "mysqlclient" else "mysql+mysqldb"
    dbs = {"default": db_settings(obs_server, POOL={"reset_on_return": "commit"}),
           "static": db_settings(obs_server, POOL={"django_pool_class": "sqlalchemy.pool.StaticPool"}),
           "dialect": db_settings(obs_server, POOL={"dialect": other}),
           "fine": db_settings(obs_server, POOL={"dialect": "mysql", "pre_ping": True})}
    result = check(project, dbs, "--tag", "autopool", driver=driver)
    assert result.returncode == 1, result.output
    assert "DATABASES['default']: (autopool.E001) DATABASES['default']['POOL']['reset_on_return']: " \
           "'commit' is refused" in result.output
    assert "DATABASES['static']: (autopool.E001) DATABASES['static']['POOL']['django_pool_class']: " \
           "sqlalchemy.pool.StaticPool cannot pool Django's connections" in result.output
    assert f"DATABASES['dialect']: (autopool.E001) DATABASES['dialect']['POOL']['dialect']: {other!r} is for " \
           in result.output
    assert "DATABASES['fine']" not in result.output
