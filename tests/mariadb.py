"""A throw-away MariaDB server for autopool's tests, or an external one from the environment.

As a library: ``Server.from_env_or_start()``. As a CLI, from the repository root::

    eval "$(python -m tests.mariadb start)"   # leaves a server running, prints export lines
    python -m tests.mariadb env                # checks it answers, prints its settings
    python -m tests.mariadb stop               # stops it and removes its directory
"""
from __future__ import annotations

import argparse
import atexit
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

ENV = "AUTOPOOL_TEST_MYSQL_"
TEST_USER = "autopool"
TEST_PASSWORD = "autopool-secret-pw"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
DIR_PREFIX = "autopool-mariadb-"
# /usr/sbin is often missing from PATH outside login shells, and that is where mariadbd lives.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


def _driver() -> Any:
    try:
        import MySQLdb as driver  # type: ignore[import-not-found]
        import MySQLdb.constants.CLIENT as _  # type: ignore[import-not-found]  # noqa: F401 - mysqlclient, not PyMySQL's shim
    except ImportError:
        import pymysql as driver  # type: ignore[import-not-found,no-redef]
    return driver


def _tool(name: str) -> str:
    path = shutil.which(name, path=_SEARCH_PATH)
    if path is None and os.geteuid() == 0:
        print(f"tests.mariadb: {name} missing, installing mariadb-server ...", file=sys.stderr)
        apt_env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "mariadb-server"]):
            subprocess.run(cmd, env=apt_env, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        path = shutil.which(name, path=_SEARCH_PATH)
    if path is None:
        raise RuntimeError(f"{name} not found: install mariadb-server or set {ENV}HOST")
    return path


def _as_root() -> list[str]:
    return ["--user=root"] if os.geteuid() == 0 else []


def free_port(count: int = 1) -> int:
    """A free loopback port (the first of ``count`` consecutive free ones): the one port picker of
    the tests. Below 32768: Linux hands out 32768-60999 to outgoing connections, which steal ports
    under load. Random, so that concurrent test sessions rarely try the same one."""
    for _ in range(10000):
        port = random.randint(20000, 31999 - count)
        if all(_bindable(p) for p in range(port, port + count)):
            return port
    raise RuntimeError(f"no {count} free consecutive port(s) in 20000-31999")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            # A detached server is reaped by PID 1, which in containers may never do it: a zombie is dead.
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True


def _ours(pid: int, directory: str, port: str = "") -> bool:
    """Is ``pid`` the mariadbd that ``start`` made in ``directory`` (listening on ``port``, if given)?
    PIDs are recycled, and a private server's environment may sit next to the session server's."""
    if not os.path.basename(directory).startswith(DIR_PREFIX):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return (("--datadir=" + os.path.join(directory, "data")).encode() in args
            and (not port or f"--port={port}".encode() in args))


def _run(cmd: list[str], stdin: Any = subprocess.DEVNULL) -> None:
    proc = subprocess.run(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout.decode(errors='replace')}")


def _tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no error log)"


class Server:
    def __init__(self, port: int = 3306, host: str = "127.0.0.1", user: str = "root", password: str = "",
                 directory: str | None = None, pid: int | None = None, external: bool = False) -> None:
        self.host, self.port, self.user, self.password = host, port, user, password
        self.dir, self.pid, self.external = directory, pid, external
        self.datadir = os.path.join(directory, "data") if directory else None
        self.socket = os.path.join(directory, "sock") if directory else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()
        self._fixed_port = port != 0
        self.adopted = False  # started by another process for the tests: stop() leaves it running

    @classmethod
    def from_env_or_start(cls, base_dir: str | None = None, port: int | None = None,
                          load_tz: bool = False) -> Server:
        adopted = cls.adopt_from_env()
        if adopted is not None:
            return adopted
        if os.environ.get(ENV + "HOST"):
            return cls(host=os.environ[ENV + "HOST"], port=int(os.environ.get(ENV + "PORT") or 3306),
                       user=os.environ.get(ENV + "USER") or "root",
                       password=os.environ.get(ENV + "PASSWORD", ""), external=True)
        directory = tempfile.mkdtemp(prefix=DIR_PREFIX, dir=base_dir)
        if len(os.path.join(directory, "sock")) > 100:  # sun_path holds 108 bytes
            shutil.rmtree(directory)
            raise RuntimeError(f"base_dir {base_dir!r} is too long for a unix socket path")
        server = cls(port=port or 0, directory=directory)
        atexit.register(server._atexit_stop)
        try:
            server._install()
            server.start()
            server.execute("".join(
                f"CREATE USER IF NOT EXISTS '{TEST_USER}'@'{h}' IDENTIFIED BY '{TEST_PASSWORD}';"
                f"GRANT ALL PRIVILEGES ON *.* TO '{TEST_USER}'@'{h}' WITH GRANT OPTION;"
                for h in ("127.0.0.1", "localhost", "%")))
            if load_tz:
                server._load_tz()
        except BaseException:
            server.stop()
            raise
        server.user, server.password = TEST_USER, TEST_PASSWORD
        return server

    @classmethod
    def adopt_from_env(cls) -> Server | None:
        """The server ``python -m tests.mariadb start`` left running (scripts/test.sh), if the
        environment names it: started for the tests, so tests may restart it and rely on its time
        zone tables, but only its starter (``stop``) ends it."""
        pid, directory = os.environ.get(ENV + "PID", ""), os.environ.get(ENV + "DIR", "")
        port = os.environ.get(ENV + "PORT", "")
        if not (os.environ.get(ENV + "HOST") and pid.isdigit() and _ours(int(pid), directory, port)):
            return None
        server = cls(host=os.environ[ENV + "HOST"], port=int(os.environ[ENV + "PORT"]),
                     user=os.environ.get(ENV + "USER") or TEST_USER, password=os.environ.get(ENV + "PASSWORD", ""),
                     directory=directory, pid=int(pid))
        server.adopted = True
        return server

    def _install(self) -> None:
        assert self.dir and self.datadir
        os.mkdir(os.path.join(self.dir, "tmp"))
        _run([_tool("mariadb-install-db"), "--no-defaults", *_as_root(), "--datadir=" + self.datadir,
                   "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve",
                   "--innodb-log-file-size=48M",
                   # Its own tmpdir here too: a server starting meanwhile wipes #sql* files in /tmp.
                   f"--tmpdir={os.path.join(self.dir, 'tmp')}"])

    def _load_tz(self) -> None:
        tz = subprocess.Popen([_tool("mariadb-tzinfo-to-sql"), "/usr/share/zoneinfo"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        # -hlocalhost: the client would otherwise follow an exported MYSQL_HOST even with --socket.
        _run([_tool("mariadb"), "--no-defaults", "-hlocalhost", f"--socket={self.socket}", "-uroot", "mysql"],
             stdin=tz.stdout)
        tz.wait()

    def start(self) -> None:
        if self.external:
            return
        if not self.dir or not self.datadir or (self.pid is not None and _alive(self.pid)):
            raise RuntimeError("start() needs a stopped server whose directory still exists")
        log = os.path.join(self.dir, "error.log")
        for attempt in range(10):
            if not self._fixed_port:
                self.port = free_port()
            # Own --tmpdir: a starting server deletes every #sql* file in its tmpdir, even another's.
            cmd = [_tool("mariadbd"), "--no-defaults", *_as_root(), "--datadir=" + self.datadir,
                   f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
                   "--skip-name-resolve", f"--tmpdir={self.dir}/tmp", f"--pid-file={self.dir}/pid",
                   f"--log-error={log}", "--max-connections=500", "--max-connect-errors=1000000",
                   "--skip-log-bin", "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=48M",
                   "--innodb-buffer-pool-dump-at-shutdown=0", "--innodb-buffer-pool-load-at-startup=0",
                   # What Debian's stock /etc/mysql config sets; --no-defaults would leave latin1.
                   "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci"]
            log_size = os.path.getsize(log) if os.path.exists(log) else 0
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True)
            self.pid = self._proc.pid
            if self._wait_ready(log):
                return
            with open(log, errors="replace") as f:
                f.seek(log_size)
                bind_failed = "Address already in use" in f.read()
            self.pid = self._proc = None
            if not bind_failed or attempt == 9:
                break
            if self._fixed_port:
                time.sleep(0.1 * (attempt + 1))  # e.g. a restart racing a client that grabbed the port
        raise RuntimeError(f"mariadbd exited during start-up (port {self.port}); error log:\n{_tail(log)}")

    def _wait_ready(self, log: str) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while self._proc and self._proc.poll() is None:
            try:
                self.admin_connect(connect_timeout=2).close()
                return True
            except Exception as exc:
                if time.monotonic() > deadline:
                    self._kill()
                    raise RuntimeError(f"mariadbd not ready after {READY_TIMEOUT:.0f}s ({exc}); error log:\n"
                                       f"{_tail(log)}") from exc
            time.sleep(0.02)
        return False

    def _kill(self) -> None:
        if self.pid is None or self._reaped():
            self.pid = self._proc = None
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while time.monotonic() < deadline and not self._reaped():
                time.sleep(0.02)
            if not self._reaped():
                os.kill(self.pid, signal.SIGKILL)
                while not self._reaped():
                    time.sleep(0.02)
        except ProcessLookupError:
            pass
        self.pid = self._proc = None

    def _reaped(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is not None
        return not _alive(self.pid or 0)

    def stop(self) -> None:
        if self.external or self.adopted:
            return
        self._kill()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _atexit_stop(self) -> None:
        # A forked child (gunicorn worker, Django --parallel) exiting must not take the server down.
        if os.getpid() == self._owner_pid:
            self.stop()

    def restart(self) -> None:
        if self.external or self.adopted:
            # An adopted server's starter stops it by the PID it printed: a restart would orphan it.
            raise RuntimeError(f"cannot restart the server {self.host}:{self.port} this process did not start")
        self._fixed_port = True  # clients and tests hold on to the port: it must not change
        self._kill()
        self.start()

    def admin_connect(self, **kw: Any) -> Any:
        if self.external or not self.socket:
            params = dict(host=self.host, port=self.port, user=self.user, password=self.password)
        else:
            params = dict(host="localhost", unix_socket=self.socket, user="root", password="")
        params.update(kw)
        return _driver().connect(**params)

    def execute(self, sql: str, args: Any = None) -> list[Any]:
        conn = self.admin_connect(client_flag=_driver().constants.CLIENT.MULTI_STATEMENTS)
        try:
            cur = conn.cursor()
            cur.execute(sql, args)
            rows = list(cur.fetchall() or ())
            while cur.nextset():
                pass
            conn.commit()
            return rows
        finally:
            conn.close()

    def create_database(self, name: str) -> None:
        quoted = "`" + name.replace("`", "``") + "`"
        self.execute(f"DROP DATABASE IF EXISTS {quoted}; "
                     f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")

    def status(self, var: str) -> int:
        rows = self.execute("SHOW GLOBAL STATUS LIKE %s", (var,))
        if not rows:
            raise KeyError(var)
        return int(rows[0][1])

    def env(self) -> dict[str, str]:
        """The environment that points a test process at this server (``from_env_or_start``)."""
        env = {ENV + "HOST": self.host, ENV + "PORT": str(self.port),
               ENV + "USER": self.user, ENV + "PASSWORD": self.password}
        if self.dir and self.pid is not None:  # a process given this environment adopts the server
            env.update({ENV + "PID": str(self.pid), ENV + "DIR": self.dir})
        return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mariadb", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop", "env"])
    parser.add_argument("--base-dir", help="parent of the server's throw-away directory (default: /tmp)")
    parser.add_argument("--port", type=int, help="port to listen on (default: a free one in 20000-31999)")
    parser.add_argument("--load-tz", action="store_true", help="load the time zone tables")
    args = parser.parse_args(argv)
    if args.command == "stop":
        pid, directory = os.environ.get(ENV + "PID", ""), os.environ.get(ENV + "DIR", "")
        # The directory is removed recursively: refuse anything but one that `start` made.
        if not pid.isdigit() or not os.path.basename(directory).startswith(DIR_PREFIX):
            parser.error(f"{ENV}PID and {ENV}DIR must be set (eval the output of `start`)")
        # PIDs are recycled: only signal the process if it is the server of that directory.
        Server(directory=directory, pid=int(pid) if _ours(int(pid), directory) else None).stop()
        return 0
    if (args.command == "env") != bool(os.environ.get(ENV + "HOST")):
        parser.error(f"`start` needs {ENV}HOST unset, `env` needs it set (eval the output of `start`)")
    server = Server.from_env_or_start(args.base_dir, args.port, args.load_tz)
    env = server.env()
    if args.command == "env":
        print(f"# {server.execute('SELECT VERSION()')[0][0]}", file=sys.stderr)
    else:
        atexit.unregister(server._atexit_stop)  # detached: it outlives this process until `stop`
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
