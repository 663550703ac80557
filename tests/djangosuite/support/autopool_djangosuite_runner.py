"""``TEST_RUNNER`` for Django's suite under ``tests/djangosuite/run.py``.

A ``DiscoverRunner`` that

* refuses to start unless the requested driver is Django's ``Database`` module
  and autopool is installed exactly when the run is an autopool run, in the
  runner and in every ``--parallel`` worker (``sitecustomize`` did the work;
  this makes its failure loud);
* records every test's outcome (``--parallel`` results are replayed into the
  parent's result, so the parent sees them all) and writes them as JSON to
  ``$AUTOPOOL_DJANGOSUITE_RESULTS``;
* counts, in every process, SQLAlchemy pool checkouts and physical connects,
  the workers' counts riding back on the result events.
"""
import json
import os
import sys
import time
import unittest

import django
from django.test.runner import (
    DiscoverRunner,
    ParallelTestSuite,
    RemoteTestResult,
    RemoteTestRunner,
    _run_subsuite,
)

MODE = os.environ.get("AUTOPOOL_DJANGOSUITE_MODE", "stock")
DRIVER = os.environ.get("AUTOPOOL_DJANGOSUITE_DRIVER", "mysqlclient")
RESULTS = os.environ.get("AUTOPOOL_DJANGOSUITE_RESULTS")

# Worst outcome wins when a test reports more than one (subtests, errors in tearDown).
RANK = {"ok": 0, "expected_failure": 1, "skip": 2, "unexpected_success": 3, "fail": 4, "error": 5}

_counts = {"checkouts": 0, "connects": 0}
_listening = False


def _on_checkout(dbapi_connection, record, proxy):
    _counts["checkouts"] += 1


def _on_connect(dbapi_connection, record):
    _counts["connects"] += 1


def check_environment():
    """Raise unless this process runs the requested driver and pooling mode."""
    global _listening
    from django.db.backends.mysql import base

    problems = []
    module = base.Database.__name__
    if DRIVER == "pymysql" and not module.startswith("pymysql"):
        problems.append(f"driver pymysql requested but Django's MySQL backend uses {module}")
    if DRIVER == "mysqlclient" and module != "MySQLdb":
        problems.append(f"driver mysqlclient requested but Django's MySQL backend uses {module}")
    autopool = sys.modules.get("autopool")
    installed = autopool is not None and autopool.is_installed()
    if MODE == "autopool":
        from autopool import patch

        if not installed or not patch.is_applied():
            problems.append("autopool run but autopool.install() did not take effect "
                            "(see the 'Error in sitecustomize' message above)")
    elif installed:
        problems.append("stock run but autopool is installed")
    if problems:
        raise RuntimeError("autopool djangosuite: " + "; ".join(problems) + f" (pid {os.getpid()})")
    if MODE == "autopool" and not _listening:
        from sqlalchemy import event
        from sqlalchemy.pool import Pool

        event.listen(Pool, "checkout", _on_checkout)
        event.listen(Pool, "connect", _on_connect)
        _listening = True


def _run_subsuite_with_stats(args):
    check_environment()
    before = dict(_counts)
    subsuite_index, events = _run_subsuite(args)
    stats = {k: _counts[k] - before[k] for k in _counts}
    stats["pid"] = os.getpid()
    events.append(("autopoolStats", 0, stats))
    return subsuite_index, events


class TimingRemoteResult(RemoteTestResult):
    """Sends each test's wall time back with its events (addDuration needs Python 3.12)."""

    def startTest(self, test):
        self._started_at = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        self.events.append(("autopoolDuration", self.test_index, time.monotonic() - self._started_at))
        super().stopTest(test)


class TimingRemoteRunner(RemoteTestRunner):
    resultclass = TimingRemoteResult


class RecordingParallelSuite(ParallelTestSuite):
    run_subsuite = _run_subsuite_with_stats
    runner_class = TimingRemoteRunner


def _describe(err):
    exc_type, value = err[0], err[1]
    text = str(value).strip().splitlines()
    first = text[0] if text else ""
    return f"{getattr(exc_type, '__name__', exc_type)}: {first}"[:300]


class RecordingResult(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records = {}
        self.details = {}
        self.pool_counts = {"checkouts": 0, "connects": 0}
        self.worker_pids = set()
        self.durations = {}

    def startTest(self, test):
        self._started_at = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        # Serial runs time here; parallel ones replay the worker's time (autopoolDuration) instead.
        self.durations.setdefault(test.id(), time.monotonic() - self._started_at)

    def autopoolDuration(self, test, elapsed):
        self.durations[test.id()] = elapsed

    def _record(self, test, outcome, detail=None):
        test_id = test.id()
        previous = self.records.get(test_id)
        if previous is None or RANK[outcome] > RANK[previous]:
            self.records[test_id] = outcome
            if detail:
                self.details[test_id] = detail

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, "ok")

    def addError(self, test, err):
        super().addError(test, err)
        self._record(test, "error", _describe(err))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, "fail", _describe(err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._record(test, "skip", str(reason)[:300])

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record(test, "expected_failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, "unexpected_success")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            outcome = "fail" if issubclass(err[0], test.failureException) else "error"
            self._record(test, outcome, f"{subtest.id()}: {_describe(err)}"[:300])

    def autopoolStats(self, test, stats):
        for key in self.pool_counts:
            self.pool_counts[key] += stats.get(key, 0)
        self.worker_pids.add(stats.get("pid"))


class RecordingRunner(DiscoverRunner):
    parallel_test_suite = RecordingParallelSuite

    def __init__(self, *args, **kwargs):
        check_environment()
        super().__init__(*args, **kwargs)

    def get_resultclass(self):
        return RecordingResult

    def run_suite(self, suite, **kwargs):
        before = dict(_counts)
        started = time.monotonic()
        result = super().run_suite(suite, **kwargs)
        if isinstance(result, RecordingResult) and RESULTS:
            for key in result.pool_counts:
                result.pool_counts[key] += _counts[key] - before[key]
            data = {
                "mode": MODE,
                "driver": DRIVER,
                "django": django.get_version(),
                "python": sys.version.split()[0],
                "tests_run": result.testsRun,
                "duration": time.monotonic() - started,
                "worker_processes": len(result.worker_pids),
                "pool": result.pool_counts,
                "results": result.records,
                "details": result.details,
                "durations": {k: round(v, 3) for k, v in result.durations.items()},
            }
            tmp = RESULTS + ".tmp"
            with open(tmp, "w") as f:
                json.dump(data, f, indent=0, sort_keys=True)
            os.replace(tmp, RESULTS)
        return result
