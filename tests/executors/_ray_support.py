"""What the Ray backend's test modules share: one Ray per module, its leak check, the
behaviour suite's Ray kinds, and a listener for the jobs that hold (``_ray_jobs``).

Starting Ray takes seconds, so each module starts one (a local Ray, or a simulated
cluster) and every test of the module runs on it. That Ray's processes are children of
the test process, its driver threads live for the module, and its gRPC connections to
actors come and go: the leak check of ``tests/conftest.py`` would take them for leaks.
Each Ray module therefore overrides ``no_leaks`` with :func:`leak_check`, which counts
Ray's own processes and threads as expected and checks, on top of spindle's threads,
child processes and pidfds, that no actor of spindle is left alive in the cluster.
Other modules keep the strict check.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import psutil
import pytest
from _support import open_fds

from spindle.executors.ray import ray_installed

from . import _ray_jobs
from ._suite import CONCURRENCY, WORKERS, ExecutorMixin

#: Marks a Ray test module: skipped, saying why, where Ray is not installed.
needs_ray = pytest.mark.skipif(
    not ray_installed(),
    reason="Ray is not installed: the Ray backend's tests need pip install 'spindle[ray]'",
)
#: How long a test waits for a holding job to say where it runs.
HEAR_LIMIT = 60.0


def spindle_actors() -> list[str]:
    """Names of spindle's actors alive in the cluster (every actor of a run is named
    ``spindle-<stage>-...``)."""
    import ray

    found = ray.util.list_named_actors(all_namespaces=True)
    names = [a["name"] if isinstance(a, dict) else str(a) for a in found]
    return sorted(n for n in names if n.startswith("spindle-"))


def _is_ray_daemon(p: psutil.Process) -> bool:
    """A process of Ray itself: its binaries, or Python running a module of Ray's."""
    import ray

    package = os.path.dirname(ray.__file__)
    try:
        return p.name() in ("gcs_server", "raylet") or any(
            part.startswith(package) for part in p.cmdline()
        )
    except psutil.Error:
        return False


def _ray_processes(roots: set[int]) -> set[int]:
    """Ray's processes now: ``roots`` (its daemons when it started), the daemons of
    nodes added since, and every process they started (actors)."""
    daemons = set(roots) | {
        p.pid for p in psutil.Process().children(recursive=True) if _is_ray_daemon(p)
    }
    pids = set(daemons)
    for pid in daemons:
        with contextlib.suppress(psutil.Error):
            pids.update(p.pid for p in psutil.Process(pid).children(recursive=True))
    return pids


def _pidfds() -> set[str]:
    return {f"{fd}->{target}" for fd, target in open_fds().items() if "pidfd" in target}


@contextlib.contextmanager
def leak_check(ray_roots: set[int]) -> Iterator[None]:
    """Around one test: fail it if it leaves a thread, a child process or a pidfd of its
    own behind, or a spindle actor alive. Ray's daemons (``ray_roots``, and those of
    nodes added meanwhile), the processes they start (actors), and the threads Ray's
    driver started before the test are Ray's.
    """
    threads_before = set(threading.enumerate())
    pidfds_before = _pidfds()
    me = psutil.Process()
    yield
    leaked_threads = []
    for t in set(threading.enumerate()) - threads_before:
        t.join(timeout=5)
        if t.is_alive():
            leaked_threads.append(t.name)
    ray_pids = _ray_processes(ray_roots)
    children = [p for p in me.children(recursive=True) if p.pid not in ray_pids]
    _, alive = psutil.wait_procs(children, timeout=5)
    for p in alive:
        p.kill()
    problems = []
    if leaked_threads:
        problems.append(f"threads left running: {sorted(leaked_threads)}")
    if alive:
        problems.append(f"child processes left running: {[p.pid for p in alive]}")
    if _pidfds() - pidfds_before:
        problems.append(f"pidfds left open: {sorted(_pidfds() - pidfds_before)}")
    actors = spindle_actors()
    if actors:
        problems.append(f"spindle actors left alive: {actors}")
    if problems:
        pytest.fail("; ".join(problems))


def ray_daemons() -> set[int]:
    """The processes a Ray started from this process has running now (its daemons)."""
    return {p.pid for p in psutil.Process().children(recursive=True)}


@contextlib.contextmanager
def marks_for_actors(directory: Path) -> Iterator[None]:
    """``SPINDLE_TEST_MARKS`` set while Ray starts: actors get the environment of the Ray
    that starts them, not of the test (a process started later)."""
    old = os.environ.get("SPINDLE_TEST_MARKS")
    os.environ["SPINDLE_TEST_MARKS"] = str(directory)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SPINDLE_TEST_MARKS", None)
        else:
            os.environ["SPINDLE_TEST_MARKS"] = old


def empty(directory: Path) -> Path:
    for path in directory.iterdir():
        path.unlink()
    return directory


class Listener:
    """The test's end of a holding job's socket (see ``_ray_jobs``): ``hear()`` waits,
    bounded, until a job says where it runs."""

    def __init__(self, marks: Path) -> None:
        self.path = str(marks / _ray_jobs.WHO)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen()
        self.sock.settimeout(HEAR_LIMIT)

    def hear(self) -> tuple[int, str]:
        """``(pid, node id)`` of the job that holds."""
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(HEAR_LIMIT)
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
        pid, node = data.decode().split()
        return int(pid), node

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Acting:
    """A thread that waits for a holding job, then acts on where it runs (kills it,
    removes its node): the test's main thread meanwhile iterates the results."""

    def __init__(self, marks: Path, act: Callable[[int, str], Any]) -> None:
        self.listener = Listener(marks)
        self.act = act
        self.heard: tuple[int, str] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-acting")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.heard = self.listener.hear()
            self.act(*self.heard)
        except BaseException as exc:
            self.error = exc

    def join(self) -> tuple[int, str]:
        self.thread.join(HEAR_LIMIT + 30)
        self.listener.close()
        if self.error is not None:
            raise self.error
        assert self.heard is not None
        return self.heard


# -- the behaviour suite's Ray kinds ---------------------------------------------------


class RayMixin(ExecutorMixin):
    """Sync jobs on Ray actors: batches, one at a time per actor."""

    label = "Ray"
    kind = "cpu"
    options: ClassVar[dict[str, Any]] = {"workers": WORKERS, "backend": "ray"}
    processes = True
    stuck_job = "killed"


class RayAsyncMixin(ExecutorMixin):
    """``async def`` jobs on async Ray actors, ``concurrency`` calls at once on each."""

    label = "RayAsync"
    kind = "cpu"
    options: ClassVar[dict[str, Any]] = {
        "workers": WORKERS,
        "concurrency": CONCURRENCY,
        "backend": "ray",
    }
    asynchronous = True
    processes = True
    calls_share_a_worker = True
    stuck_job = "cancelled"  # on the actor's loop, which goes on


RAY_KINDS: tuple[type[ExecutorMixin], ...] = (RayMixin, RayAsyncMixin)
