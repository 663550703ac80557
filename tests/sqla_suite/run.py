"""Run SQLAlchemy's own pool tests (``test/engine/test_pool.py``) against autopool's pool classes.

    python -m tests.sqla_suite.run [--pool QueuePool|DjangoQueuePool]

The installed SQLAlchemy release's source distribution (which carries its
test suite) is downloaded once with pip into ``.cache/sqla/`` and unpacked
there. Its tests run in a subprocess, under SQLAlchemy's own pytest plugin,
against the *installed* SQLAlchemy (``python -s`` stops the suite's
conftest from putting the unpacked ``lib/`` first), with
``sqla_pool_plugin`` replacing ``sqlalchemy.pool.QueuePool``. Every test
must pass except those in :data:`KNOWN`, each failing for the reason given
and only for it. Exit status 0 when that holds; a summary on stdout.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "sqla"
HERE = Path(__file__).resolve().parent
TEST_FILE = "test/engine/test_pool.py"

# test name (without parametrisation) -> (why it fails, pattern its failure text must match)
KNOWN: dict[str, tuple[str, str]] = {
    "test_recreate_state": (
        "compares every instance attribute of the pool and its recreation; they differ only in the "
        "new pool's own lock (the test skips SQLAlchemy's lock by its name, _overflow_lock)",
        r"Differing items:\s*\n\S*\s*\{'_lock': <unlocked _thread\.lock object at 0x[0-9a-f]+>\} != "
        r"\{'_lock': <unlocked _thread\.lock object at 0x[0-9a-f]+>\}\s*\n\S*\s*Use -v",
    ),
}


@dataclass
class Result:
    passed: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # unexpected failures and errors -> text
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and len(self.passed) > 100


def sdist_dir(version: str = sqlalchemy.__version__) -> Path:
    """The unpacked source distribution of SQLAlchemy ``version`` (downloaded once)."""
    target = CACHE / f"sqlalchemy-{version}"
    if (target / TEST_FILE).exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / f"sqlalchemy-{version}.tar.gz"
    if not archive.exists():
        # --no-binary for SQLAlchemy only: its build dependencies may come as wheels.
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "SQLAlchemy",
                        f"SQLAlchemy=={version}", "-d", str(CACHE), "-q"], check=True)
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(CACHE, filter="data")
        except TypeError:  # a Python release without extraction filters
            tar.extractall(CACHE)
    return target


def run(pool: str = "QueuePool", timeout: float = 600) -> Result:
    src = sdist_dir()
    junit = CACHE / f"junit-{pool}-{os.getpid()}.xml"
    env = dict(os.environ, AUTOPOOL_SQLA_POOL=pool,
               PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))
    # pytest prints untruncated assertion diffs when it sees a CI environment; KNOWN's patterns
    # match the ordinary report, so the suite's own run never sees one.
    for name in ("CI", "BUILD_NUMBER"):
        env.pop(name, None)
    cmd = [sys.executable, "-s", "-m", "pytest", TEST_FILE, "-p", "sqla_pool_plugin", "-p", "no:cacheprovider",
           "-q", "--tb=short", "--maxfail=1000", f"--junitxml={junit}"]
    proc = subprocess.run(cmd, cwd=src, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if not junit.exists():
        raise RuntimeError(f"SQLAlchemy's suite did not run (exit {proc.returncode}):\n{proc.stdout[-5000:]}")
    try:
        return _parse(junit)
    finally:
        junit.unlink()


def _parse(junit: Path) -> Result:
    result = Result()
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if case.find("skipped") is not None:
            result.skipped.append(name)
        elif bad is None:
            result.passed.append(name)
        else:
            text = f"{bad.get('message', '')}\n{bad.text or ''}"
            base = case.get("name", "").split("[", 1)[0]
            known = KNOWN.get(base)
            if known is not None and re.search(known[1], text):
                result.known.append(name)
            else:
                result.failed[name] = text
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", choices=("QueuePool", "DjangoQueuePool"), default="QueuePool")
    args = parser.parse_args()
    result = run(args.pool)
    print(f"SQLAlchemy {sqlalchemy.__version__} {TEST_FILE} with autopool's {args.pool}: "
          f"{len(result.passed)} passed, {len(result.known)} known, {len(result.failed)} unexpected failures, "
          f"{len(result.skipped)} skipped")
    for name in result.known:
        print(f"  known: {name}: {KNOWN[name.split('::')[1].split('[')[0]][0]}")
    for name, text in result.failed.items():
        print(f"  FAILED: {name}\n{text[-3000:]}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
