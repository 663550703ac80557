"""Throw-away MariaDB topologies on loopback for autopool's cluster tests.

* :class:`Cluster`: a 3-node Galera cluster (Debian's ``galera-4``), each node a ``mariadbd`` with its
  own data directory, SQL port, group (gcomm) port, IST port and SST port, all below 32768.
* :class:`ReplicaPair`: a primary and a replica with GTID replication.

As root, Galera's stock rsync SST fails: the rsync daemon it starts drops to ``nobody`` and cannot
write the joiner's data directory. The nodes use the SST method ``rsync_root``, a copy of the stock
script whose rsync daemon keeps uid 0 (``--dparam=uid=root``). A node that was SIGKILLed is restarted
after ``mariadbd --wsrep-recover``, so it rejoins at its recovered position by IST from a donor's
gcache instead of a full SST. Group timeouts are shortened (``EVS_OPTIONS``) so that the cluster
notices a dead node within about a second; production defaults are five seconds and more.

As a library::

    cluster = Cluster.start()          # ~10 s; cluster.nodes[i].port, .kill(), .restart(), .isolate()
    ...
    cluster.stop()

As a CLI, for poking at it by hand (``python -m tests.galera start`` prints the ports and stays in the
foreground until interrupted).
"""
from __future__ import annotations

import argparse
import atexit
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.mariadb import TEST_PASSWORD, TEST_USER, _alive, _as_root, _driver, _run, _tail, _tool

PROVIDER = "/usr/lib/galera/libgalera_smm.so"
CLUSTER_NAME = "autopool_test"
DIR_PREFIX = "autopool-galera-"
START_TIMEOUT = 90.0
# Shorter than Galera's defaults (suspect 5 s, inactive 15 s): a SIGKILLed node is evicted from the
# primary component in about a second, which bounds the write stall on the surviving nodes.
EVS_OPTIONS = ("evs.keepalive_period=PT0.2S;evs.inactive_check_period=PT0.2S;evs.suspect_timeout=PT1S;"
               "evs.inactive_timeout=PT2S;evs.install_timeout=PT2S;evs.join_retrans_period=PT0.2S;"
               "gmcast.peer_timeout=PT1S;pc.announce_timeout=PT1S")
_SEARCH_PATH = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/sbin", os.environ.get("PATH", "")])
_install_lock = threading.Lock()


def ensure_galera() -> None:
    """Install Debian's galera-4 (and rsync) when missing and running as root."""
    with _install_lock:
        if os.path.exists(PROVIDER) and shutil.which("rsync", path=_SEARCH_PATH):
            return
        if os.geteuid() != 0:
            raise RuntimeError(f"{PROVIDER} or rsync missing: apt-get install galera-4 rsync")
        print("tests.galera: installing galera-4 rsync ...", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "galera-4", "rsync"]):
            subprocess.run(cmd, env=env, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def _port_block(size: int) -> int:
    """The first of ``size`` consecutive free ports in 20000-31999 (below the ephemeral range)."""
    for _ in range(200):
        base = random.randint(20000, 32000 - size)
        socks = []
        try:
            for port in range(base, base + size):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError("no block of free ports found")


def _wait(what: str, predicate: Callable[[], bool], timeout: float, log: str | None = None,
          interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}"
                               + (f"; error log:\n{_tail(log, 40)}" if log else ""))
        time.sleep(interval)


def _install_db(datadir: str, *extra: str) -> None:
    """``mariadb-install-db`` into ``datadir``; one retry (seen failing once on a loaded machine)."""
    cmd = [_tool("mariadb-install-db"), "--no-defaults", *_as_root(), f"--datadir={datadir}",
           "--auth-root-authentication-method=normal", "--skip-test-db", "--skip-name-resolve", *extra]
    try:
        _run(cmd)
    except RuntimeError:
        shutil.rmtree(datadir, ignore_errors=True)
        time.sleep(0.5)
        _run(cmd)


def _sst_wrapper(directory: str) -> str:
    """A directory holding ``wsrep_sst_rsync_root``: the stock rsync SST, rsync daemon kept at uid 0."""
    bindir = os.path.join(directory, "bin")
    os.makedirs(bindir, exist_ok=True)
    stock = shutil.which("wsrep_sst_rsync", path=_SEARCH_PATH + os.pathsep + "/usr/bin")
    if stock is None:
        raise RuntimeError("wsrep_sst_rsync not found (mariadb-server)")
    with open(stock) as f:
        script = f.read()
    patched = script.replace("rsync --daemon --no-detach",
                             "rsync --daemon --no-detach --dparam=uid=root --dparam=gid=root")
    if patched == script:
        raise RuntimeError(f"{stock}: rsync daemon invocation not found; cannot wrap it")
    target = os.path.join(bindir, "wsrep_sst_rsync_root")
    with open(target, "w") as f:
        f.write(patched)
    os.chmod(target, 0o755)
    # The script sources wsrep_sst_common from its own directory.
    common = os.path.join(bindir, "wsrep_sst_common")
    if not os.path.exists(common):
        os.symlink(os.path.join(os.path.dirname(stock), "wsrep_sst_common"), common)
    return bindir


class Node:
    """One ``mariadbd`` of a topology: its own directory, ports and process."""

    def __init__(self, name: str, directory: str, port: int, extra: list[str],
                 env: dict[str, str] | None = None) -> None:
        self.name, self.dir, self.port = name, directory, port
        self.host = "127.0.0.1"
        self.datadir = os.path.join(directory, "data")
        self.socket = os.path.join(directory, "sock")
        self.log = os.path.join(directory, "error.log")
        self.extra = extra
        self.env = env
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.user, self.password = TEST_USER, TEST_PASSWORD

    def __repr__(self) -> str:
        return f"<Node {self.name} 127.0.0.1:{self.port} pid={self.pid}>"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self, *more: str) -> list[str]:
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        return [_tool("mariadbd"), "--no-defaults", *_as_root(), f"--datadir={self.datadir}",
                f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
                "--skip-name-resolve", f"--tmpdir={self.dir}/tmp", f"--pid-file={self.dir}/pid",
                f"--log-error={self.log}", "--max-connections=300", "--max-connect-errors=1000000",
                "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=48M",
                "--innodb-buffer-pool-dump-at-shutdown=0", "--innodb-buffer-pool-load-at-startup=0",
                "--innodb-flush-log-at-trx-commit=2", "--performance-schema=OFF",
                "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
                *self.extra, *more]

    def spawn(self, *more: str) -> None:
        if self.pid is not None and _alive(self.pid):
            raise RuntimeError(f"{self} is running")
        self._proc = subprocess.Popen(self.command(*more), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True, env=self.env)
        self.pid = self._proc.pid

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and _alive(self.pid)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        def ready() -> bool:
            if not self.running():
                raise RuntimeError(f"{self.name} exited during start-up; error log:\n{_tail(self.log, 40)}")
            self.admin_connect(connect_timeout=2).close()
            return True

        deadline = time.monotonic() + timeout
        while True:
            try:
                ready()
                return
            except RuntimeError:
                raise
            except Exception:  # noqa: BLE001
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not accepting connections after {timeout:.0f} s; "
                                       f"error log:\n{_tail(self.log, 40)}") from None
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the process (SIGKILL by default: a crash) and wait until it is gone."""
        if self.pid is None:
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 30
        while self.running():
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                deadline += 30
            time.sleep(0.01)
        self.pid = self._proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def admin_connect(self, **kw: Any) -> Any:
        params: dict[str, Any] = dict(host="localhost", unix_socket=self.socket, user="root", password="",
                                      autocommit=True)
        params.update(kw)
        return _driver().connect(**params)

    def execute(self, sql: str, args: Any = None, **kw: Any) -> list[Any]:
        conn = self.admin_connect(**kw)
        try:
            cur = conn.cursor()
            cur.execute(sql, args)
            rows = list(cur.fetchall() or ())
            while cur.nextset():
                pass
            return rows
        finally:
            conn.close()

    def status(self, name: str) -> str | None:
        rows = self.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
        return str(rows[0][1]) if rows else None

    def settings(self) -> dict[str, Any]:
        return {"HOST": self.host, "PORT": str(self.port), "USER": self.user, "PASSWORD": self.password}


class GaleraNode(Node):
    def __init__(self, name: str, directory: str, base: int, peers: list[int], sst_bin: str) -> None:
        self.gport, self.ist_port, self.sst_port = base + 1, base + 2, base + 3
        extra = [
            "--wsrep-on=ON", f"--wsrep-provider={PROVIDER}", f"--wsrep-cluster-name={CLUSTER_NAME}",
            "--wsrep-cluster-address=gcomm://" + ",".join(f"127.0.0.1:{p}" for p in peers),
            f"--wsrep-node-name={name}", f"--wsrep-node-address=127.0.0.1:{self.gport}",
            f"--wsrep-node-incoming-address=127.0.0.1:{base}",
            f"--wsrep-sst-receive-address=127.0.0.1:{self.sst_port}", "--wsrep-sst-method=rsync_root",
            f"--wsrep-provider-options=base_port={self.gport};ist.recv_addr=127.0.0.1:{self.ist_port};"
            f"gcache.size=128M;{EVS_OPTIONS}",
            "--binlog-format=ROW", "--default-storage-engine=InnoDB", "--innodb-autoinc-lock-mode=2",
            "--wsrep-slave-threads=2", "--log-bin=mariadb-bin", "--log-slave-updates=ON",
        ]
        # The SST scripts are found through PATH; the wrapper directory first.
        env = dict(os.environ, PATH=os.pathsep.join([sst_bin, _SEARCH_PATH, "/usr/bin", "/bin"]))
        env.pop("MYSQL_HOST", None)
        super().__init__(name, directory, base, extra, env)

    def synced(self) -> bool:
        rows = dict(self.execute("SHOW GLOBAL STATUS WHERE Variable_name IN "
                                 "('wsrep_local_state', 'wsrep_ready', 'wsrep_cluster_status')"))
        return (rows.get("wsrep_local_state") == "4" and rows.get("wsrep_ready") == "ON"
                and rows.get("wsrep_cluster_status") == "Primary")

    def wait_synced(self, timeout: float = START_TIMEOUT) -> None:
        self.wait_ready(timeout)
        _wait(f"{self.name} to be Synced", self.synced, timeout, self.log)

    def recover_position(self) -> str | None:
        """``mariadbd --wsrep-recover``: the last committed position (uuid:seqno) of a crashed node."""
        size = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        proc = subprocess.run(self.command("--wsrep-recover", "--log-error=" + self.log), env=self.env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=120)
        with open(self.log, errors="replace") as f:
            f.seek(size)
            text = f.read()
        found = re.findall(r"WSREP: Recovered position: (\S+:-?\d+)", text + proc.stdout.decode(errors="replace"))
        return found[-1] if found else None

    def restart(self, wait: bool = True) -> None:
        """Start again after a crash or stop; rejoin at the recovered position (IST, not SST)."""
        position = self.recover_position()
        more = [f"--wsrep-start-position={position}"] if position else []
        self.spawn(*more)
        if wait:
            self.wait_synced()

    def isolate(self, on: bool = True) -> None:
        """Cut the node off from the group (it leaves the primary component), or reconnect it."""
        self.execute(f"SET GLOBAL wsrep_provider_options='gmcast.isolate={1 if on else 0}'")


class _Servers:
    """Throw-away servers in one directory: killed and removed by ``stop()``, or at exit by the
    process that started them."""

    def __init__(self, directory: str, nodes: list[Node]) -> None:
        self.dir, self.nodes = directory, nodes
        self._owner_pid = os.getpid()
        self.start_seconds = 0.0
        atexit.register(self._atexit_stop)

    def stop(self) -> None:
        for node in self.nodes:
            try:
                node.kill()
            except Exception:  # noqa: BLE001
                pass
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""

    def _atexit_stop(self) -> None:
        if os.getpid() == self._owner_pid:
            self.stop()


class Cluster(_Servers):
    """A 3-node Galera cluster on loopback."""

    nodes: list[GaleraNode]

    @classmethod
    def start(cls, size: int = 3, base_dir: str | None = None) -> Cluster:
        t0 = time.monotonic()
        ensure_galera()
        directory = tempfile.mkdtemp(prefix=DIR_PREFIX, dir=base_dir)
        base = _port_block(10 * size)
        sst_bin = _sst_wrapper(directory)
        bases = [base + 10 * i for i in range(size)]
        nodes = [GaleraNode(f"node{i + 1}", os.path.join(directory, f"node{i + 1}"), b,
                            [p + 1 for p in bases], sst_bin) for i, b in enumerate(bases)]
        cluster = cls(directory, nodes)
        try:
            first = nodes[0]
            os.makedirs(first.dir)
            _install_db(first.datadir)
            first.spawn("--wsrep-new-cluster")
            first.wait_synced()
            first.execute("".join(
                f"CREATE USER IF NOT EXISTS '{TEST_USER}'@'{h}' IDENTIFIED BY '{TEST_PASSWORD}';"
                f"GRANT ALL PRIVILEGES ON *.* TO '{TEST_USER}'@'{h}' WITH GRANT OPTION;"
                for h in ("127.0.0.1", "localhost")),
                client_flag=_driver().constants.CLIENT.MULTI_STATEMENTS)
            # The joiners receive their data directory by SST from the first node, one at a time
            # (a donor serves one SST at a time).
            for node in nodes[1:]:
                os.makedirs(node.datadir)
                node.spawn()
                node.wait_synced()
            _wait("a full cluster", lambda: first.status("wsrep_cluster_size") == str(size), 30, first.log)
        except BaseException:
            cluster.stop()
            raise
        cluster.start_seconds = time.monotonic() - t0
        return cluster

    def node_by_port(self, port: int) -> GaleraNode:
        return next(n for n in self.nodes if n.port == int(port))


class ReplicaPair(_Servers):
    """A primary and one replica, GTID replication (``MASTER_USE_GTID=slave_pos``)."""

    def __init__(self, directory: str, primary: Node, replica: Node) -> None:
        super().__init__(directory, [primary, replica])
        self.primary, self.replica = primary, replica

    @classmethod
    def start(cls, base_dir: str | None = None) -> ReplicaPair:
        t0 = time.monotonic()
        directory = tempfile.mkdtemp(prefix=DIR_PREFIX + "repl-", dir=base_dir)
        base = _port_block(2)
        common = ["--binlog-format=ROW", "--log-bin=mariadb-bin", "--log-slave-updates=ON",
                  "--gtid-strict-mode=ON"]
        primary = Node("primary", os.path.join(directory, "primary"), base, common + ["--server-id=1"])
        replica = Node("replica", os.path.join(directory, "replica"), base + 1,
                       common + ["--server-id=2", "--read-only=ON"])
        pair = cls(directory, primary, replica)
        try:
            for node in (primary, replica):
                os.makedirs(node.dir)
                _install_db(node.datadir, "--skip-log-bin")
                node.spawn()
            for node in (primary, replica):
                node.wait_ready()
            flags = dict(client_flag=_driver().constants.CLIENT.MULTI_STATEMENTS)
            primary.execute("".join(
                f"CREATE USER IF NOT EXISTS '{TEST_USER}'@'{h}' IDENTIFIED BY '{TEST_PASSWORD}';"
                f"GRANT ALL PRIVILEGES ON *.* TO '{TEST_USER}'@'{h}' WITH GRANT OPTION;"
                for h in ("127.0.0.1", "localhost")) +
                "CREATE USER 'repl'@'127.0.0.1' IDENTIFIED BY 'repl-pw';"
                "GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';", **flags)
            replica.execute(
                "SET GLOBAL gtid_slave_pos = '';"
                f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, MASTER_USER='repl', "
                "MASTER_PASSWORD='repl-pw', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1;"
                "START SLAVE;", **flags)
            _wait("the replica to catch up", pair.caught_up, 30, replica.log)
        except BaseException:
            pair.stop()
            raise
        pair.start_seconds = time.monotonic() - t0
        return pair

    def replica_status(self) -> dict[str, Any]:
        conn = self.replica.admin_connect()
        try:
            cur = conn.cursor()
            cur.execute("SHOW SLAVE STATUS")
            row = cur.fetchone()
            return dict(zip([d[0] for d in cur.description], row)) if row else {}
        finally:
            conn.close()

    def caught_up(self) -> bool:
        st = self.replica_status()
        if st.get("Slave_IO_Running") != "Yes" or st.get("Slave_SQL_Running") != "Yes":
            return False
        primary_pos = self.primary.execute("SELECT @@gtid_binlog_pos")[0][0]
        return self.replica.execute("SELECT @@gtid_slave_pos")[0][0] == primary_pos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.galera", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["cluster", "replica"], help="what to start")
    args = parser.parse_args(argv)
    topo: Any = Cluster.start() if args.what == "cluster" else ReplicaPair.start()
    nodes = topo.nodes if args.what == "cluster" else [topo.primary, topo.replica]
    print(f"# started in {topo.start_seconds:.1f} s; Ctrl-C stops it", file=sys.stderr)
    for node in nodes:
        print(f"{node.name}: 127.0.0.1:{node.port} socket={node.socket} pid={node.pid} log={node.log}")
    sys.stdout.flush()
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        topo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
