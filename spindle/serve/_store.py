"""The server's journal: accepted jobs made durable before their 202, answers kept.

One SQLite file (WAL), one table::

    jobs(id PRIMARY KEY, idem UNIQUE, input, state, output, accepted, finished)
         state: 0 accepted, not finished · 1 done · 2 failed

Group commit: the HTTP loop never writes. It hands the writer thread what to record
(:meth:`JobStore.accept`, :meth:`JobStore.finish`); the thread takes everything queued,
writes it in one transaction, commits, and only then resolves the accepts, so a ``202``
goes out once its job is durable, and a thousand requests arriving together cost one
commit::

    loop: accept(jobs) ──▶ queue ──▶ writer: INSERT ...; INSERT ...; COMMIT ──▶ loop: 202s
    loop: finish(jobs) ──▶ queue ──▶ writer: UPDATE ... (same transactions, no one waits)

After a crash, :meth:`JobStore.open` gives back the jobs accepted and not finished: the
server runs them again, and every id it accepted gets its answer. A job whose answer was
recorded is never run again; one that finished in the moment before the crash, its answer
not yet committed, runs again (so a job runs at least once, and each id has exactly one
answer). ``synchronous=NORMAL`` in WAL mode: a committed job survives the server's
crash (the kernel has it); a power failure may lose the last commits, as the run
journal's does (``docs/journal.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from typing import Any

import orjson

from .._errors import ConfigError
from .._failure import Failure
from ..connectors._json import JSON_OPTIONS, json_default
from ._jobs import DONE, FAILED, QUEUED, Job

__all__ = ["JobStore", "StoredJob"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    idem TEXT UNIQUE,
    input BLOB,
    state INTEGER NOT NULL DEFAULT 0,
    output BLOB,
    accepted REAL,
    finished REAL
)
"""
_STATES = {0: QUEUED, 1: DONE, 2: FAILED}
_STOP: Any = object()


def _encode(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=json_default, option=JSON_OPTIONS)
    except TypeError:
        return orjson.dumps(repr(value))


class StoredJob:
    """A job as the journal has it (for ids no longer in memory)."""

    __slots__ = ("id", "output", "state")

    def __init__(self, job_id: str, state: str, output: dict[str, Any] | None) -> None:
        self.id = job_id
        self.state = state
        self.output = output


class JobStore:
    """The journal of a server (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._conn = self._connect()
            self._conn.execute(_SCHEMA)
            self._reader = self._connect()
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the journal {self.path}: {exc}") from exc
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        #: Transactions committed, and the rows they wrote.
        self.commits = 0
        self.rows = 0
        self.error: BaseException | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def unfinished(self) -> list[tuple[str, str | None, Any]]:
        """``(id, idempotency key, input)`` of every job accepted and not finished, in
        the order they were accepted."""
        rows = self._conn.execute(
            "SELECT id, idem, input FROM jobs WHERE state = 0 ORDER BY rowid"
        ).fetchall()
        return [(i, k, orjson.loads(raw)) for i, k, raw in rows]

    def start(self) -> None:
        """Start the writer thread (after the run's workers are forked)."""
        self._thread = threading.Thread(target=self._write, name="spindle-serve-journal")
        self._thread.start()

    # -- the loop's side --------------------------------------------------------------

    def accept(self, jobs: list[Job], loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Record ``jobs`` as accepted; the future resolves once they are committed (or
        fails with the journal's error)."""
        done: asyncio.Future[None] = loop.create_future()
        rows = [(j.id, j.idem, _encode(j.item), j.accepted) for j in jobs]
        self._queue.put(("accept", rows, (loop, done)))
        return done

    def finish(self, jobs: list[Job]) -> None:
        """Record the outcomes of ``jobs`` (no one waits for this commit)."""
        now = time.time()
        rows = []
        for j in jobs:
            value = j.value
            if type(value) is Failure:
                out: dict[str, Any] = {"error": value.error, "message": value.message}
                out.update(attempts=value.attempts, traceback=value.traceback)
                rows.append((2, _encode(out), now, j.id))
            else:
                rows.append((1, _encode({"result": value}), now, j.id))
        self._queue.put(("finish", rows, None))

    def lookup(self, job_id: str) -> StoredJob | None:
        """The journal's record of ``job_id`` (a blocking read, cheap on WAL)."""
        row = self._reader.execute(
            "SELECT state, output FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            return None
        state, output = row
        return StoredJob(job_id, _STATES[state], orjson.loads(output) if output else None)

    def find_idem(self, key: str) -> list[str]:
        """The ids accepted under the idempotency key ``key``: one for a single item,
        one per item of a batch (stored as ``key#0``, ``key#1``, ...)."""
        row = self._reader.execute("SELECT id FROM jobs WHERE idem = ?", (key,)).fetchone()
        if row is not None:
            return [row[0]]
        rows = self._reader.execute(
            "SELECT id, idem FROM jobs WHERE idem >= ? AND idem < ?", (key + "#", key + "$")
        ).fetchall()
        numbered = []
        for job_id, idem in rows:
            suffix = idem[len(key) + 1 :]
            if suffix.isdigit():
                numbered.append((int(suffix), job_id))
        return [job_id for _, job_id in sorted(numbered)]

    # -- the writer thread ------------------------------------------------------------

    def _write(self) -> None:
        conn = self._conn
        get, get_nowait = self._queue.get, self._queue.get_nowait
        stopping = False
        while not stopping:
            ops = [get()]
            while len(ops) < 4096:
                try:
                    ops.append(get_nowait())
                except queue.Empty:
                    break
            waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
            error: BaseException | None = None
            try:
                conn.execute("BEGIN")
                for op in ops:
                    if op is _STOP:
                        stopping = True
                        continue
                    kind, rows, waiter = op
                    if kind == "accept":
                        conn.executemany(
                            "INSERT OR IGNORE INTO jobs (id, idem, input, state, accepted) "
                            "VALUES (?, ?, ?, 0, ?)",
                            rows,
                        )
                        waiting.append(waiter)
                    else:
                        conn.executemany(
                            "UPDATE jobs SET state = ?, output = ?, finished = ? WHERE id = ?",
                            rows,
                        )
                    self.rows += len(rows)
                conn.execute("COMMIT")
                self.commits += 1
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                error = exc
                self.error = exc
            for loop, future in waiting:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(_settle, future, error)

    def close(self) -> None:
        """Commit what is queued, stop the writer, close the file. Idempotent."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        with contextlib.suppress(sqlite3.Error):
            self._reader.close()
            self._conn.close()


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
