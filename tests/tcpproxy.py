"""A small TCP proxy for network-fault tests: forward, stall, cut.

It runs in a process of its own (``python -m tests.tcpproxy UPSTREAM_HOST UPSTREAM_PORT``) so that it
keeps forwarding while the process under test is blocked in a C driver call (mysqlclient connecting,
or a gevent hub stuck in ``read_query_result``), with or without monkey patching on either side.
:class:`ProxyProcess` starts and drives it; every request is answered at once, and the controller
waits for each answer with a deadline::

    with ProxyProcess(server.host, server.port) as proxy:
        DATABASES[...]["HOST"], DATABASES[...]["PORT"] = proxy.host, proxy.port
        proxy.stall(upstream_port)         # stop forwarding on one connection (both ways)
        proxy.stall(upstream_port, 100, requests=False)  # the reply stops after 100 more bytes
        proxy.resume(upstream_port)
        proxy.cut()                        # reset every connection (RST to both sides)
        proxy.set_mode("blackhole")        # new connections: accepted, never answered

Connections are identified by the local port of the proxy's upstream socket: that is the port the
server shows in ``information_schema.PROCESSLIST.HOST`` (``127.0.0.1:PORT``), so a test can find the
pipe behind a given ``CONNECTION_ID()``.

Modes for new connections: ``forward`` (default), ``blackhole`` (accept, never reply, never
connect upstream: a server whose kernel still accepts but whose process is frozen), ``reset``
(accept, then reset at once) and ``stall`` (connect upstream, forward nothing).
"""
from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

MODES = ("forward", "blackhole", "reset", "stall")


def _reset(sock: socket.socket) -> None:
    """Close with an RST, waking any thread blocked on the socket first."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    sock.close()


class Pipe:
    """One proxied connection: two pumps, each with a byte budget (None: unlimited, 0: stalled)."""

    def __init__(self, proxy: Proxy, client: socket.socket, mode: str) -> None:
        self.proxy, self.client, self.mode = proxy, client, mode
        self.upstream: socket.socket | None = None
        self.upstream_port: int | None = None
        self.cond = threading.Condition()
        stalled = mode == "stall"
        self.budget: dict[str, int | None] = {"up": 0 if stalled else None, "down": 0 if stalled else None}
        self.closed = False
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        t = threading.Thread(target=self._run, daemon=True)
        self.threads.append(t)
        t.start()

    def _run(self) -> None:
        if self.mode == "blackhole":
            with self.cond:
                while not self.closed:
                    self.cond.wait()
            return
        if self.mode == "reset":
            self.close()
            return
        try:
            up = socket.create_connection(self.proxy.upstream, timeout=10)
            up.settimeout(None)
        except OSError:
            self.close()
            return
        with self.cond:
            if self.closed:
                up.close()
                return
            self.upstream, self.upstream_port = up, up.getsockname()[1]
        t = threading.Thread(target=self._pump, args=(up, self.client, "down"), daemon=True)
        self.threads.append(t)
        t.start()
        self._pump(self.client, up, "up")

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while data:
                    with self.cond:
                        while not self.closed and self.budget[direction] == 0:
                            self.cond.wait()
                        if self.closed:
                            return
                        budget = self.budget[direction]
                        n = len(data) if budget is None else min(budget, len(data))
                        if budget is not None:
                            self.budget[direction] = budget - n
                    dst.sendall(data[:n])
                    data = data[n:]
        except OSError:
            pass
        # One side ended: end the other (a clean close stays clean unless cut).
        with self.cond:
            if self.closed:
                return
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def stall(self, after_bytes: int = 0, requests: bool = True) -> None:
        """Stop forwarding server->client after ``after_bytes`` more bytes, and client->server at
        once unless ``requests`` is False (then a request still reaches the server, and its reply
        stops mid-stream)."""
        with self.cond:
            if requests:
                self.budget["up"] = 0
            self.budget["down"] = after_bytes
            self.cond.notify_all()

    def resume(self) -> None:
        with self.cond:
            self.budget["up"] = self.budget["down"] = None
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.cond.notify_all()
        for sock in (self.client, self.upstream):
            if sock is not None:
                _reset(sock)

    def info(self) -> dict[str, Any]:
        return {"upstream_port": self.upstream_port, "mode": self.mode, "closed": self.closed,
                "budget": dict(self.budget)}


class Proxy:
    """The forwarding engine (threads); :class:`ProxyProcess` runs it in a child process."""

    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(128)
        self.host, self.port = self.listener.getsockname()[:2]
        self.mode = "forward"
        self.pipes: list[Pipe] = []
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> Proxy:
        self.thread.start()
        return self

    def _accept(self) -> None:
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                if self.stopping:
                    _reset(client)
                    return
                pipe = Pipe(self, client, self.mode)
                self.pipes.append(pipe)
            pipe.start()

    def select(self, upstream_port: int | None) -> list[Pipe]:
        with self.lock:
            pipes = [p for p in self.pipes if not p.closed]
        if upstream_port is None:
            return pipes
        found = [p for p in pipes if p.upstream_port == upstream_port]
        if not found:
            raise KeyError(f"no open connection with upstream port {upstream_port}")
        return found

    def stop(self, timeout: float = 5.0) -> bool:
        """Reset every connection and stop; True when every thread ended in time."""
        self.stopping = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            pipes = list(self.pipes)
        for p in pipes:
            p.close()
        deadline = time.monotonic() + timeout
        for t in [self.thread] + [t for p in pipes for t in p.threads]:
            t.join(max(deadline - time.monotonic(), 0))
        return not any(t.is_alive() for t in [self.thread] + [t for p in pipes for t in p.threads])

    def handle(self, request: dict[str, Any]) -> Any:
        op, port = request["op"], request.get("port")
        if op == "list":
            return [p.info() for p in self.select(None)]
        if op == "mode":
            if request["mode"] not in MODES:
                raise ValueError(f"mode must be one of {MODES}")
            self.mode = request["mode"]
            return self.mode
        pipes = self.select(port)
        for p in pipes:
            if op == "stall":
                p.stall(int(request.get("after_bytes", 0)), bool(request.get("requests", True)))
            elif op == "resume":
                p.resume()
            elif op == "cut":
                p.close()
            else:
                raise ValueError(f"unknown op {op!r}")
        return len(pipes)


def serve(upstream_host: str, upstream_port: int) -> int:
    """The child process: one JSON request per stdin line, one JSON answer per stdout line."""
    proxy = Proxy(upstream_host, upstream_port).start()
    out = sys.stdout
    out.write(json.dumps({"port": proxy.port, "host": proxy.host}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "stop":
            break
        try:
            answer = {"ok": proxy.handle(request)}
        except Exception as exc:  # noqa: BLE001 - reported to the controller
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    clean = proxy.stop()
    out.write(json.dumps({"ok": "stopped", "clean": clean}) + "\n")
    out.flush()
    return 0


class ProxyProcess:
    """Start and drive a proxy child process; every call is bounded by ``timeout``."""

    def __init__(self, upstream_host: str, upstream_port: int, timeout: float = 10.0) -> None:
        self.upstream = (upstream_host, int(upstream_port))
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self.host, self.port = "127.0.0.1", 0

    def start(self) -> ProxyProcess:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.tcpproxy", self.upstream[0], str(self.upstream[1])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=root)
        hello = self._read()
        self.host, self.port = hello["host"], hello["port"]
        return self

    def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("tcpproxy did not answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError("tcpproxy exited")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, op: str, **kw: Any) -> Any:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(dict(op=op, **kw)) + "\n").encode())
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer["ok"]

    def pipes(self) -> list[dict[str, Any]]:
        return self.request("list")

    def set_mode(self, mode: str) -> None:
        self.request("mode", mode=mode)

    def stall(self, port: int | None = None, after_bytes: int = 0, requests: bool = True) -> int:
        return self.request("stall", port=port, after_bytes=after_bytes, requests=requests)

    def resume(self, port: int | None = None) -> int:
        return self.request("resume", port=port)

    def cut(self, port: int | None = None) -> int:
        return self.request("cut", port=port)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                self.proc = proc
                try:
                    self.request("stop")
                finally:
                    self.proc = None
        except Exception:  # noqa: BLE001 - killed below
            pass
        try:
            proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(self.timeout)
        finally:
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    f.close()

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], int(sys.argv[2])))
