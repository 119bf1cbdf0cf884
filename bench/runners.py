"""The registry: every workload and the runners it is measured with.

A runner takes the job function and the input iterable and returns an iterator over
the results in input order. It owns its pool, created when iteration starts and shut
down when it ends, so the measured time covers start-up and shut-down. Libraries are
imported inside the runner, so a missing one only fails its own rows, and before the
clock starts (``Entry.needs``), so no row pays for imports in its time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures.process  # noqa: F401 - imported before any clock starts
import importlib
import multiprocessing
import multiprocessing.pool  # Pool() would import it on the clock
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from . import work

Job = Callable[..., Any]
Runner = Callable[[Job, Iterable[int]], Iterator[Any]]


class Unavailable(Exception):
    """The library a runner needs cannot be imported."""


@dataclass(frozen=True)
class Failed:
    """A failed item, yielded in its place by runners that report failures per item."""

    error: str


def _need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{module} not importable") from exc


def serial(fn: Job, items: Iterable[int]) -> Iterator[Any]:
    return map(fn, items)


def split_serial(parts: int = 2) -> Runner:
    """The machine's own ceiling, not a peer: the serial loop in ``parts`` forked
    processes at once, each over every ``parts``-th item, results sent back whole at
    the end. No pool, no scheduling, no per-item messages: what ``parts`` cores give
    when nothing else is paid. On a virtual machine whose cores slow each other down
    it stays below ``parts``x, and a runner's speed-up is best read against it."""

    def run(fn: Job, items: Iterable[int]) -> Iterator[Any]:
        work = list(items)
        children: list[tuple[int, int]] = []
        for k in range(parts):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: its share, then exit without any cleanup
                try:
                    os.close(read_end)
                    with os.fdopen(write_end, "wb") as out:
                        out.write(pickle.dumps([fn(x) for x in work[k::parts]]))
                finally:
                    os._exit(0)
            os.close(write_end)
            children.append((pid, read_end))
        results: list[Any] = [None] * len(work)
        for k, (pid, read_end) in enumerate(children):
            with os.fdopen(read_end, "rb") as answer:
                results[k::parts] = pickle.loads(answer.read())
            os.waitpid(pid, 0)
        yield from results

    return run


def pool_map(chunksize: int | None = None, lazy: bool = False) -> Runner:
    def run(fn: Job, items: Iterable[int]) -> Iterator[Any]:
        with multiprocessing.Pool() as pool:
            if lazy:
                yield from pool.imap(fn, items, chunksize or 1)
            else:
                yield from pool.map(fn, items, chunksize)

    return run


def ppe_map(chunksize: int = 1) -> Runner:
    def run(fn: Job, items: Iterable[int]) -> Iterator[Any]:
        with ProcessPoolExecutor() as executor:
            yield from executor.map(fn, items, chunksize=chunksize)

    return run


def mpire_map(lazy: bool = False, **options: Any) -> Runner:
    def run(fn: Job, items: Iterable[int]) -> Iterator[Any]:
        with _need("mpire").WorkerPool() as pool:
            yield from (pool.imap if lazy else pool.map)(fn, items, **options)

    return run


def joblib_parallel(fn: Job, items: Iterable[int]) -> Iterator[Any]:
    joblib = _need("joblib")
    yield from joblib.Parallel(n_jobs=-1)(joblib.delayed(fn)(x) for x in items)


def pebble_schedule(timeout: float) -> Runner:
    def run(fn: Job, items: Iterable[int]) -> Iterator[Any]:
        with _need("pebble").ProcessPool() as pool:
            futures = [pool.schedule(fn, args=(x,), timeout=timeout) for x in items]
            for future in futures:
                try:
                    yield future.result()
                except Exception as exc:
                    yield Failed(type(exc).__name__)

    return run


def asyncio_semaphore(concurrency: int, use_uvloop: bool) -> Runner:
    """The plain asyncio way: a semaphore, taken before each task is created."""

    async def bounded(fn: Job, items: Iterable[int]) -> list[Any]:
        semaphore = asyncio.Semaphore(concurrency)
        tasks = []
        for x in items:
            await semaphore.acquire()
            task = asyncio.create_task(fn(x))
            task.add_done_callback(lambda _: semaphore.release())
            tasks.append(task)
        return await asyncio.gather(*tasks)

    def run(fn: Job, items: Iterable[int]) -> Iterator[Any]:
        run_loop = _need("uvloop").run if use_uvloop else asyncio.run
        yield from run_loop(bounded(fn, items))

    return run


def spindle_map(**options: Any) -> Runner:
    def run(fn: Job, items: Iterable[int]) -> Iterator[Any]:
        try:
            from spindle import map as smap
        except ImportError as exc:
            raise Unavailable("spindle not importable") from exc
        yield from smap(fn, items, **options)

    return run


@dataclass(frozen=True)
class Entry:
    label: str
    run: Runner
    #: (full, quick) input size when it differs from the workload's.
    size: tuple[int, int] | None = None
    note: str = ""
    #: Modules imported before the clock starts: a user pays for imports once.
    needs: tuple[str, ...] = ()

    def prepare(self) -> None:
        for module in self.needs:
            _need(module)


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    fn: Job
    #: The serial answer for item ``x``; results are checked against it.
    answer: Callable[[int], int]
    size: tuple[int, int]
    runners: dict[str, Entry]
    #: How the results are consumed: kept in a list, folded as they stream by, or
    #: checked one by one with failures counted.
    mode: Literal["collect", "stream", "faults"] = "collect"
    source: Callable[[int], Iterable[int]] = range
    #: Wall-clock limit of one run in seconds (full, quick); past it the run is "hung".
    limit: tuple[float, float] = (300.0, 60.0)

    def size_of(self, runner: str, quick: bool) -> int:
        size = self.runners[runner].size or self.size
        return size[1 if quick else 0]


PPE_LABEL = "`ProcessPoolExecutor().map` chunksize=1"
#: Every module spindle loads on its first call, so that no row pays for imports on
#: the clock (this module imports the standard library pools' modules up front).
SPINDLE_NEEDS = ("spindle", "spindle._api", "spindle.executors.processes")
SPINDLE_CPU = Entry('spindle `map(kind="cpu")`', spindle_map(kind="cpu"), needs=SPINDLE_NEEDS)


def cpu_runners(ppe_default: Entry, big_chunk_note: str = "") -> dict[str, Entry]:
    return {
        "serial": Entry("serial `list(map(fn, items))`", serial),
        "pool-map": Entry("`multiprocessing.Pool().map`", pool_map()),
        "ppe-map": ppe_default,
        "ppe-map-2000": Entry(
            "`ProcessPoolExecutor().map` chunksize=2000",
            ppe_map(2000),
            note=big_chunk_note,
        ),
        "mpire": Entry("mpire `WorkerPool().map`", mpire_map(), needs=("mpire",)),
        "joblib": Entry("joblib `Parallel(n_jobs=-1)`", joblib_parallel, needs=("joblib",)),
        "spindle": SPINDLE_CPU,
    }


CONCURRENCY = 1000
GATHER_NOTE = "keeps all N tasks to gather the results in order"
FAULT_TIMEOUT = 2.0

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            "tiny",
            "tiny jobs (a few us each): throughput when moving the job is the cost",
            work.tiny,
            work.tiny,
            (1_000_000, 100_000),
            cpu_runners(
                Entry(
                    PPE_LABEL,
                    ppe_map(),
                    size=(100_000, 10_000),
                    note="smaller N: at 1M it takes ~100 s and 2 GB",
                )
            ),
        ),
        Workload(
            "medium",
            "medium jobs (~20 ms of pure-Python CPU each): parallel speed-up",
            work.medium,
            work.medium,
            (200, 20),
            {
                **cpu_runners(
                    Entry(PPE_LABEL, ppe_map()), "one chunk: a single worker gets every item"
                ),
                "ceiling": Entry(
                    "ceiling: serial loop in 2 forked processes, half the items each",
                    split_serial(2),
                    note="the machine's limit, not a peer",
                ),
            },
        ),
        Workload(
            "async",
            f"async jobs (`await asyncio.sleep({work.SLEEP:g})`) at concurrency {CONCURRENCY}",
            work.job,
            work.identity,
            (100_000, 10_000),
            {
                "asyncio": Entry(
                    "asyncio loop + `Semaphore`",
                    asyncio_semaphore(CONCURRENCY, False),
                    note=GATHER_NOTE,
                ),
                "uvloop": Entry(
                    "uvloop + `Semaphore`",
                    asyncio_semaphore(CONCURRENCY, True),
                    note=GATHER_NOTE,
                    needs=("uvloop",),
                ),
                "spindle": Entry(
                    'spindle `map(kind="io")`',
                    spindle_map(kind="io", concurrency=CONCURRENCY),
                    needs=SPINDLE_NEEDS,
                ),
            },
        ),
        Workload(
            "memory",
            "memory: a long generator of near-free jobs, results discarded",
            work.tiny_cheap,
            work.tiny_cheap,
            (5_000_000, 200_000),
            {
                "serial": Entry("serial `map` (baseline)", serial),
                "pool-imap": Entry(
                    "`multiprocessing.Pool().imap` chunksize=1000", pool_map(1000, lazy=True)
                ),
                "ppe-map": Entry("`ProcessPoolExecutor().map` chunksize=1000", ppe_map(1000)),
                "spindle": SPINDLE_CPU,
            },
            mode="stream",
            source=work.stream,
        ),
        Workload(
            "faults",
            f"faults: item {work.KILL_AT} kills its worker, item {work.HANG_AT} never returns",
            work.flaky,
            work.double,
            (1000, 1000),
            {
                "ppe-map": Entry(PPE_LABEL, ppe_map()),
                "pool-imap": Entry("`multiprocessing.Pool().imap`", pool_map(lazy=True)),
                "mpire": Entry(
                    f"mpire `imap` task_timeout={FAULT_TIMEOUT:g}",
                    mpire_map(lazy=True, task_timeout=FAULT_TIMEOUT),
                    needs=("mpire",),
                ),
                "pebble": Entry(
                    f"pebble `schedule` timeout={FAULT_TIMEOUT:g}",
                    pebble_schedule(FAULT_TIMEOUT),
                    needs=("pebble",),
                ),
                "spindle": Entry(
                    f'spindle `map(timeout={FAULT_TIMEOUT:g}, on_error="yield")`',
                    spindle_map(kind="cpu", timeout=FAULT_TIMEOUT, on_error="yield"),
                    needs=SPINDLE_NEEDS,
                ),
            },
            mode="faults",
            limit=(60.0, 6.0),
        ),
    ]
}
