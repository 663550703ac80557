"""Django's own test suite as a gate for autopool.

Runs Django's ``tests/runtests.py`` (the source of the installed Django
version, downloaded once into ``.cache/django-src/``) against a throw-away
MariaDB, once on stock Django and once with ``autopool.install()`` and a
``POOL`` on both aliases, and fails when

* a test that passes stock fails, errors, is skipped or does not run at all
  under autopool;
* the autopool run crashed or ran fewer tests;
* pooling did not really happen: the server's ``Connections`` counter (server
  sessions opened during the run) must drop well below the stock run's, and
  the pools must have handed out more checkouts than they opened connections.

The stock run's results are cached per Django version, driver, labels and
parallelism in ``.cache/djangosuite/`` (``--stock-cache refresh`` re-runs it).

Usage, from the repository root::

    python -m tests.djangosuite.run                      # mysqlclient, the database labels
    python -m tests.djangosuite.run --driver pymysql
    python -m tests.djangosuite.run --labels all         # the whole suite (~18,000 tests)
    python -m tests.djangosuite.run --labels basic,queries --parallel 1 -- --failfast

Set ``AUTOPOOL_TEST_MYSQL_HOST`` (``_PORT``, ``_USER``, ``_PASSWORD``) to use a
running server (it needs the time zone tables: ``mariadb-tzinfo-to-sql``);
otherwise one is started and stopped here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SUPPORT = HERE / "support"

DEFAULT_LABELS = (
    "backends transactions transaction_hooks select_for_update servers handlers test_utils test_runner "
    "multiple_database async db_utils requests_tests signals schema migrations introspection timezones "
    "basic get_or_create delete update bulk_create fixtures model_fields queries cache sessions_tests"
).split()
DEFAULT_POOL = {"pool_size": 5, "max_overflow": 10}
# Needed by the parallel runner to report a failing test at all; the rest only widen coverage
# (tests needing a missing one are skipped in both runs alike).
REQUIRED_MODULES = {"tblib": "tblib>=1.5.0"}
OPTIONAL_MODULES = {"yaml": "PyYAML", "PIL": "Pillow>=6.2.1", "jinja2": "jinja2>=2.11.0"}
BAD = ("fail", "error", "unexpected_success")
RANK = {"ok": 0, "expected_failure": 1, "skip": 2, "unexpected_success": 3, "fail": 4, "error": 5}
# Schema of the cached stock results; bump when the recorded data changes meaning.
CACHE_VERSION = 1


def log(msg: str) -> None:
    print(f"djangosuite: {msg}", flush=True)


# -- Django's source --------------------------------------------------------------------------------

def django_source(cache: Path, version: str, python: str) -> Path:
    """The ``tests`` directory of Django ``version``'s source, downloaded and extracted once."""
    root = cache / "django-src"
    tests = root / f"django-{version}" / "tests"
    if (tests / "runtests.py").is_file():
        return tests
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"django-{version}.tar.gz"
    if not archive.is_file():
        log(f"downloading the source of Django {version}")
        download = root / "download"
        shutil.rmtree(download, ignore_errors=True)
        subprocess.run([python, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "--disable-pip-version-check", "--dest", str(download), f"django=={version}"],
                       check=True)
        found = [p for p in download.iterdir() if p.name.lower().startswith("django-") and
                 p.name.endswith(".tar.gz")]
        if len(found) != 1:
            raise SystemExit(f"djangosuite: expected one sdist from pip download, got {found}")
        os.replace(found[0], archive)
        shutil.rmtree(download, ignore_errors=True)
    log(f"extracting {archive.name}")
    staging = root / f".extract-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive) as tar:
        # filter="data" refuses links and paths outside the target (Python >= 3.11.4/3.12).
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(staging, **kwargs)
    extracted = [p for p in staging.iterdir() if p.is_dir()]
    if len(extracted) != 1 or not (extracted[0] / "tests" / "runtests.py").is_file():
        raise SystemExit(f"djangosuite: unexpected layout in {archive}")
    target = root / f"django-{version}"
    shutil.rmtree(target, ignore_errors=True)
    os.replace(extracted[0], target)
    shutil.rmtree(staging, ignore_errors=True)
    return tests


def ensure_modules(python: str, install: bool) -> None:
    """tblib is required (without it a failing test in a worker kills the run); others optional."""
    def missing(modules: dict[str, str]) -> list[str]:
        code = ("import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] "
                "if importlib.util.find_spec(m) is None))")
        out = subprocess.run([python, "-c", code, *modules], capture_output=True, text=True, check=True)
        return [modules[m] for m in out.stdout.split()]

    need = missing(REQUIRED_MODULES)
    want = missing(OPTIONAL_MODULES)
    if install and (need or want):
        log(f"installing test dependencies: {' '.join(need + want)}")
        proc = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               *need, *want])
        if proc.returncode and need:
            raise SystemExit("djangosuite: could not install " + " ".join(need))
        need = missing(REQUIRED_MODULES)
    if need:
        raise SystemExit(f"djangosuite: missing {' '.join(need)} (pip install {' '.join(need)}, "
                         "or run without --no-install)")
    if want and not install:
        log(f"note: {' '.join(want)} not installed; the tests that need them are skipped in both runs")


# -- the server ---------------------------------------------------------------------------------------

def start_server() -> Any:
    sys.path.insert(0, str(REPO))
    from tests.mariadb import Server

    server = Server.from_env_or_start(load_tz=True)
    try:
        zones = int(server.execute("SELECT COUNT(*) FROM mysql.time_zone_name")[0][0])
    except Exception:  # noqa: BLE001 - an external server may not let us look
        zones = 0
    if not zones:
        log("WARNING: the server has no time zone tables; timezones tests are skipped in both runs")
    return server


class Counters:
    """Server status counters across a run (the admin connection that reads them counts once)."""

    NAMES = ("Connections", "Aborted_clients", "Aborted_connects")

    def __init__(self, server: Any) -> None:
        self.server = server

    def read(self) -> dict[str, int]:
        rows = self.server.execute("SHOW GLOBAL STATUS WHERE Variable_name IN (%s, %s, %s)", self.NAMES)
        return {name: int(value) for name, value in rows}


# -- one run of Django's suite -----------------------------------------------------------------------

def run_suite(mode: str, args: argparse.Namespace, tests_dir: Path, server: Any, out_dir: Path,
              labels: list[str] | None = None, parallel: str | None = None,
              name: str = "") -> dict[str, Any]:
    labels = args.label_list if labels is None else labels
    parallel = args.parallel if parallel is None else parallel
    results_path = out_dir / f"{mode}{name}-{args.driver}.json"
    log_path = out_dir / f"{mode}{name}-{args.driver}.log"
    results_path.unlink(missing_ok=True)
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": os.pathsep.join([str(SUPPORT)] + [p for p in [env.get("PYTHONPATH")] if p]),
        "AUTOPOOL_DJANGOSUITE_MODE": mode,
        "AUTOPOOL_DJANGOSUITE_DRIVER": args.driver,
        "AUTOPOOL_DJANGOSUITE_SRC": str(REPO),
        "AUTOPOOL_DJANGOSUITE_RESULTS": str(results_path),
        "AUTOPOOL_DJANGOSUITE_DB": json.dumps({"host": server.host, "port": server.port,
                                               "user": server.user, "password": server.password}),
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    env.pop("AUTOPOOL_DJANGOSUITE_POOL", None)
    env.pop("AUTOPOOL_ENABLED", None)
    if mode == "autopool":
        env["AUTOPOOL_DJANGOSUITE_POOL"] = json.dumps(args.pool)
    cmd = [args.python, "runtests.py", "--settings=autopool_djangosuite_settings", "--noinput",
           f"--parallel={parallel}", f"--verbosity={args.verbosity}", *args.extra, *labels]
    counters = Counters(server)
    before = counters.read()
    log(f"{mode}{name} run ({args.driver}): {' '.join(cmd[1:6])} ... > {log_path}")
    started = time.monotonic()
    with open(log_path, "wb") as out:
        # Own process group: a timeout ends the runner and its --parallel workers together.
        proc = subprocess.Popen(cmd, cwd=tests_dir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
        except BaseException as exc:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            rc = "timeout"
    elapsed = time.monotonic() - started
    after = counters.read()
    run: dict[str, Any] = {"mode": mode, "returncode": rc, "wall_time": elapsed, "log": str(log_path),
                           "server": {k: after[k] - before[k] - (1 if k == "Connections" else 0)
                                      for k in Counters.NAMES}}
    if results_path.is_file():
        run.update(json.loads(results_path.read_text()))
    else:
        run["crashed"] = True
    tail = log_path.read_text(errors="replace").splitlines()[-args.tail:]
    if run.get("crashed") or args.tail_always:
        print("\n".join("    | " + line for line in tail), flush=True)
    log(f"{mode}{name} run finished in {elapsed:.0f} s: exit {rc}, {run.get('tests_run', '?')} tests, "
        f"{run['server']['Connections']} server sessions opened")
    return run


# -- comparison -----------------------------------------------------------------------------------------

def counts(run: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for outcome in run.get("results", {}).values():
        out[outcome] = out.get(outcome, 0) + 1
    return out


def load_known_flaky(path: Path | None) -> list[str]:
    if path is None or not path.is_file():
        return []
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def compare(stock: dict[str, Any], pooled: dict[str, Any],
            ignore: Any = ()) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(regressions as (test, stock outcome, autopool outcome), tests fixed by autopool)."""
    regressions = []
    fixed = []
    s_res, p_res = stock.get("results", {}), pooled.get("results", {})
    for test, s in sorted(s_res.items()):
        if test in ignore:
            continue
        p = p_res.get(test, "missing")
        if s in ("ok", "expected_failure") and p != s:
            regressions.append((test, s, p))
        elif s == "skip" and p in BAD:
            regressions.append((test, s, p))
        elif s in BAD and p not in BAD and p != "missing":
            fixed.append(test)
    for test, p in sorted(p_res.items()):
        # Errors reported outside any stock test (setUpClass, module import) under autopool only.
        if test not in s_res and test not in ignore and p in BAD:
            regressions.append((test, "missing", p))
    return regressions, fixed


def pooling_checks(stock: dict[str, Any], pooled: dict[str, Any], max_ratio: float) -> list[str]:
    problems = []
    s_sessions = stock["server"]["Connections"]
    p_sessions = pooled["server"]["Connections"]
    if s_sessions > 0 and p_sessions > max_ratio * s_sessions:
        problems.append(f"the autopool run opened {p_sessions} server sessions, more than {max_ratio:.0%} of "
                        f"the stock run's {s_sessions}: pooling did not take effect")
    pool = pooled.get("pool", {})
    checkouts, connects = pool.get("checkouts", 0), pool.get("connects", 0)
    if checkouts == 0:
        problems.append("no connection was checked out of an autopool pool")
    elif connects >= checkouts:
        problems.append(f"the pools opened {connects} connections for {checkouts} checkouts: no reuse")
    return problems


def runnable_label(test_id: str) -> str:
    """``setUpClass (app.tests.Class)`` -> ``app.tests.Class``; a test id stays as it is."""
    if test_id.endswith(")") and " (" in test_id:
        return test_id[test_id.index(" (") + 2:-1]
    return test_id


def rerun(args: argparse.Namespace, tests_dir: Path, server: Any, out_dir: Path,
          regressions: list[tuple[str, str, str]]) -> dict[str, str]:
    """Run the regressed tests again, alone and serially, under autopool (a diagnosis only:
    a regression that passes alone is order-dependent or flaky; it still fails the gate)."""
    labels = sorted({runnable_label(test) for test, _, _ in regressions})[:args.rerun]
    again = run_suite("autopool", args, tests_dir, server, out_dir, labels=labels, parallel="1",
                      name="-rerun")
    results = again.get("results", {})
    out = {}
    for test, _, _ in regressions:
        label = runnable_label(test)
        if label not in labels:
            continue
        outcomes = [o for t, o in results.items() if t == label or t.startswith(label + ".")
                    or runnable_label(t) == label]
        out[test] = max(outcomes, key=RANK.get) if outcomes else "not run"
    return out


def cache_key(args: argparse.Namespace, version: str, server_version: str) -> str:
    raw = json.dumps([CACHE_VERSION, version, server_version, args.driver, sorted(args.label_list),
                      args.parallel, args.extra, args.python])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.djangosuite.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--driver", choices=("mysqlclient", "pymysql"), default="mysqlclient")
    parser.add_argument("--labels", default="default",
                        help="comma- or space-separated test labels; 'default' for the database-related "
                             "labels, 'all' for the whole suite")
    parser.add_argument("--parallel", default="2", help="runtests.py --parallel (default 2)")
    parser.add_argument("--mode", choices=("compare", "stock", "autopool"), default="compare",
                        help="compare (default): stock run (cached) then autopool run; or one run alone")
    parser.add_argument("--stock-cache", choices=("use", "refresh", "off"), default="use",
                        help="reuse the cached stock results (default), re-run and store them, or neither")
    parser.add_argument("--pool", type=json.loads, default=DEFAULT_POOL,
                        help=f"POOL dict as JSON for both aliases (default {json.dumps(DEFAULT_POOL)})")
    parser.add_argument("--max-session-ratio", type=float, default=0.5,
                        help="fail if the autopool run opens more than this fraction of the stock run's "
                             "server sessions (default 0.5)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for runtests.py")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per run")
    parser.add_argument("--verbosity", "-v", type=int, default=1, help="runtests.py verbosity")
    parser.add_argument("--tail", type=int, default=30, help="log lines shown when a run crashes")
    parser.add_argument("--tail-always", action="store_true", help="show the log tail after every run")
    parser.add_argument("--no-install", action="store_true",
                        help="do not pip install missing test dependencies (tblib, PyYAML, Pillow, jinja2)")
    parser.add_argument("--rerun", type=int, default=50, metavar="N",
                        help="rerun up to N regressed tests alone under autopool, to tell order-dependent "
                             "or flaky failures from ones that reproduce (0: off; the gate fails either way)")
    parser.add_argument("--known-flaky", type=Path, default=HERE / "known_flaky.txt",
                        help="tests left out of the comparison (default: tests/djangosuite/known_flaky.txt)")
    parser.add_argument("--expected-differences", type=Path, default=None, metavar="FILE",
                        help="tests allowed to differ from the stock run: documented limitations of the "
                             "--pool tried (e.g. tests/djangosuite/txmode_differences.txt); shown, not compared")
    parser.add_argument("extra", nargs="*", help="after --: extra runtests.py arguments")
    args = parser.parse_args(argv)
    labels = args.labels.replace(",", " ").split()
    args.label_list = DEFAULT_LABELS if labels == ["default"] else [] if labels == ["all"] else labels
    args.expected = frozenset(load_known_flaky(args.expected_differences))
    args.ignore = frozenset(load_known_flaky(args.known_flaky)) | args.expected

    version = subprocess.run([args.python, "-c", "import django; print(django.get_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    cache = args.cache_dir.resolve()
    tests_dir = django_source(cache, version, args.python)
    ensure_modules(args.python, install=not args.no_install)
    out_dir = cache / "djangosuite"
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    server = start_server()
    try:
        server_version = server.execute("SELECT VERSION()")[0][0]
        stock_cache = out_dir / f"stock-{version}-{args.driver}-{cache_key(args, version, server_version)}.json"
        log(f"Django {version}, driver {args.driver}, server {server_version} "
            f"at {server.host}:{server.port}, labels: {' '.join(args.label_list) or 'all'}")
        stock = None
        if args.mode == "compare" and args.stock_cache == "use" and stock_cache.is_file():
            stock = json.loads(stock_cache.read_text())
            log(f"stock results from {stock_cache} ({stock['tests_run']} tests)")
        if stock is None and args.mode in ("compare", "stock"):
            stock = run_suite("stock", args, tests_dir, server, out_dir)
            if not stock.get("crashed") and args.stock_cache != "off":
                stock_cache.write_text(json.dumps(stock))
        pooled = None
        if args.mode in ("compare", "autopool"):
            pooled = run_suite("autopool", args, tests_dir, server, out_dir)
            if stock is not None and not stock.get("crashed") and not pooled.get("crashed"):
                regressions, _ = compare(stock, pooled, args.ignore)
                if regressions and args.rerun:
                    pooled["rerun"] = rerun(args, tests_dir, server, out_dir, regressions)
    finally:
        server.stop()
    return report(args, stock, pooled, time.monotonic() - started)


def report(args: argparse.Namespace, stock: dict[str, Any] | None, pooled: dict[str, Any] | None,
           elapsed: float) -> int:
    failures: list[str] = []
    regressions: list[tuple[str, str, str]] = []
    print()
    print(f"== Django test suite, driver {args.driver}, --parallel {args.parallel} ({elapsed:.0f} s) ==")
    for run in (stock, pooled):
        if run is None:
            continue
        if run.get("crashed"):
            failures.append(f"the {run['mode']} run crashed (exit {run['returncode']}); see {run['log']}")
            print(f"{run['mode']:>9}: CRASHED, exit {run['returncode']}, log {run['log']}")
            continue
        c = counts(run)
        line = (f"{run['mode']:>9}: {run['tests_run']} tests in {run['wall_time']:.0f} s: "
                f"{c.get('ok', 0)} ok, {c.get('fail', 0)} failures, {c.get('error', 0)} errors, "
                f"{c.get('skip', 0)} skipped, {c.get('expected_failure', 0)} expected failures, "
                f"{c.get('unexpected_success', 0)} unexpected successes; "
                f"server sessions opened: {run['server']['Connections']}")
        if run["mode"] == "autopool":
            pool = run.get("pool", {})
            line += (f"; pool checkouts: {pool.get('checkouts', 0)}, physical connects: "
                     f"{pool.get('connects', 0)}")
        print(line)
    if stock is None and pooled is not None and not pooled.get("crashed"):
        bad = sorted(t for t, o in pooled["results"].items() if o in BAD)
        for test in bad:
            print(f"  {pooled['results'][test]}: {test}: {pooled['details'].get(test, '')}")
        print("(no stock run to compare with: --mode autopool only reports)")
    if stock and pooled and not stock.get("crashed") and not pooled.get("crashed"):
        regressions, fixed = compare(stock, pooled, args.ignore)
        for test in sorted(args.ignore):
            s_out, p_out = stock["results"].get(test, "missing"), pooled["results"].get(test, "missing")
            if test in args.expected:
                # Listed with its reason in the file and the docs; still shown, differing or not.
                print(f"documented difference: {test}: stock {s_out}, autopool {p_out}"
                      + ("" if s_out != p_out else " (no longer differs: drop it from the list?)"))
            elif s_out != p_out:
                print(f"known flaky, ignored: {test}: stock {s_out}, autopool {p_out}")
        if regressions:
            failures.append(f"{len(regressions)} test(s) pass stock but not under autopool")
            print(f"REGRESSIONS under autopool ({len(regressions)}):")
            again = pooled.get("rerun", {})
            for test, s, p in regressions:
                note = f" [rerun alone: {again[test]}]" if test in again else ""
                print(f"  {test}: stock {s}, autopool {p}: {pooled['details'].get(test, '')}{note}")
        if fixed:
            print(f"fail stock but pass under autopool ({len(fixed)}): {' '.join(fixed[:20])}"
                  + (" ..." if len(fixed) > 20 else ""))
        stock_bad = sorted(t for t, o in stock["results"].items() if o in BAD)
        if stock_bad:
            print(f"failing stock too, ignored ({len(stock_bad)}): " + " ".join(stock_bad[:20])
                  + (" ..." if len(stock_bad) > 20 else ""))
        if pooled["tests_run"] < stock["tests_run"]:
            failures.append(f"the autopool run ran {pooled['tests_run']} tests, the stock run "
                            f"{stock['tests_run']}")
        failures += pooling_checks(stock, pooled, args.max_session_ratio)
    for failure in failures:
        print(f"FAIL: {failure}")
    # Closing line: tests passing under autopool (stock alone for --mode stock), and regressions
    # plus every other gate failure (a crash, too few tests run, no pooling).
    last = pooled if pooled is not None else stock
    passed = 0 if last is None or last.get("crashed") else counts(last).get("ok", 0)
    failed = len(regressions) + len(failures) - (1 if regressions else 0)
    print(f"djangosuite: {passed} passed, {failed} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
