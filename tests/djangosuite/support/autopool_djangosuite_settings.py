"""Settings for Django's ``tests/runtests.py``, written for ``tests/djangosuite/run.py``.

Everything that varies between runs comes from the environment, so forked or
spawned workers and subprocesses see the same settings:

* ``AUTOPOOL_DJANGOSUITE_DB``: JSON ``{"host", "port", "user", "password"}``;
* ``AUTOPOOL_DJANGOSUITE_POOL``: JSON ``POOL`` dict for both aliases, or
  absent for a stock run (no ``POOL`` key at all: stock Django, untouched).
"""
import json
import os

_db = json.loads(os.environ["AUTOPOOL_DJANGOSUITE_DB"])
_pool = os.environ.get("AUTOPOOL_DJANGOSUITE_POOL")


def _alias(name):
    settings = {
        "ENGINE": "django.db.backends.mysql",
        "NAME": name,
        "USER": _db["user"],
        "PASSWORD": _db["password"],
        "HOST": _db["host"],
        "PORT": str(_db["port"]),
        "TEST": {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_general_ci"},
    }
    if _pool:
        settings["POOL"] = json.loads(_pool)
    return settings


DATABASES = {
    "default": _alias("django_default"),
    "other": _alias("django_other"),
}

SECRET_KEY = "django_tests_secret_key"

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.MD5PasswordHasher",
]

DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

USE_TZ = False

# Records every test's outcome (and checks that autopool is really installed).
TEST_RUNNER = "autopool_djangosuite_runner.RecordingRunner"
