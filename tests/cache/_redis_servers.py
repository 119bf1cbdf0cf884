"""Real servers for the Redis ring's tests: redis-server processes and a standalone
ZooKeeper, each on a free port in a temporary folder, killed and reaped at teardown.

Readiness is waited for by asking the server itself (a PING, a TCP connect), polled
with a deadline that fails the test, never a fixed sleep.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

REDIS_SERVER = os.environ.get("SPINDLE_REDIS_SERVER") or shutil.which("redis-server")
#: Debian's zookeeper package puts its jars here.
ZOOKEEPER_JARS = "/usr/share/java/zookeeper.jar"
JAVA = shutil.which("java")
#: Seconds a server gets to come up before the test fails.
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    """Poll ``predicate`` (which looks at real state) until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def answers_ping(port: int) -> bool:
    """A redis-server on ``port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def zookeeper_serves(port: int) -> bool:
    """A ZooKeeper on ``port`` serves requests: its ``srvr`` command reports its mode.

    It accepts connections before it serves, and a client that connects too early backs
    off for seconds before trying again.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"srvr")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
            return b"Mode:" in answer
    except OSError:
        return False


class RedisServers:
    """``n`` redis-server processes; each can be killed and started again on its port."""

    def __init__(self, folder: Path, n: int) -> None:
        assert REDIS_SERVER is not None
        self.folder = folder
        self.ports = [free_port() for _ in range(n)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        for i in range(n):
            self.start(i)

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{port}" for port in self.ports]

    def name(self, i: int) -> str:
        """The server's name in the ring's stats."""
        return f"redis://127.0.0.1:{self.ports[i]}/0"

    def start(self, i: int) -> None:
        assert self.procs[i] is None, f"server {i} is running"
        port = self.ports[i]
        folder = self.folder / str(port)
        folder.mkdir(exist_ok=True)
        args = [REDIS_SERVER, "--save", "", "--appendonly", "no", "--port", str(port)]
        args += ["--bind", "127.0.0.1", "--dir", str(folder), "--logfile", "redis.log"]
        self.procs[i] = subprocess.Popen(args, stdin=subprocess.DEVNULL, cwd=folder)
        wait_for(lambda: self._alive(i) and answers_ping(port), f"redis-server on port {port}")

    def _alive(self, i: int) -> bool:
        proc = self.procs[i]
        if proc is None or proc.poll() is not None:
            log = self.folder / str(self.ports[i]) / "redis.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise AssertionError(f"redis-server on port {self.ports[i]} exited:\n{tail}")
        return True

    def kill(self, i: int) -> None:
        """SIGKILL server ``i`` and reap it: its port refuses connections afterwards."""
        proc = self.procs[i]
        assert proc is not None, f"server {i} is not running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        self.procs[i] = None

    def close(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None:
                self.kill(i)


def zookeeper_missing() -> str | None:
    """Why a ZooKeeper server cannot be started here, or None."""
    if JAVA is None:
        return "java is not installed (apt-get install -y zookeeper brings it)"
    if not os.path.exists(ZOOKEEPER_JARS):
        return "Debian's zookeeper package is not installed (apt-get install -y zookeeper)"
    return None


class ZooKeeper:
    """A standalone ZooKeeper server (Debian's jars) on a free port."""

    def __init__(self, folder: Path) -> None:
        assert JAVA is not None
        self.port = free_port()
        data = folder / "zookeeper"
        data.mkdir()
        config = data / "zoo.cfg"
        config.write_text(
            "tickTime=500\n"
            f"dataDir={data}\n"
            f"clientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n"
            "maxSessionTimeout=10000\n"
        )
        classpath = ":".join([ZOOKEEPER_JARS, *sorted(glob.glob("/usr/share/java/slf4j-nop*.jar"))])
        self.log = data / "server.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    JAVA,
                    "-Xmx256m",
                    "-XX:+UseSerialGC",
                    "-XX:TieredStopAtLevel=1",
                    "-Dzookeeper.admin.enableServer=false",
                    "-cp",
                    classpath,
                    "org.apache.zookeeper.server.ZooKeeperServerMain",
                    str(config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=data,
            )
        try:
            wait_for(self._ready, f"ZooKeeper on port {self.port}", timeout=60)
        except BaseException:
            self.close()
            raise

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"ZooKeeper exited:\n{self.log.read_text()[-3000:]}")
        return zookeeper_serves(self.port)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
