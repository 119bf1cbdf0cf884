"""A journal in memory: the same behaviour as :class:`SqliteJournal` within one process.

For tests of the engine, and for runs that do not need to resume (``--no-journal``):
duplicate keys are still run once, results and failures still go to the outputs, but
nothing survives the process. A report source's report is taken when ``summary()`` is
called, and a last time on ``close()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from ..connectors import Output, UnwritableRecord
from ..observe.report import report_from_json
from ._base import (
    DONE,
    FAILED,
    Journal,
    JournalStats,
    Key,
    Record,
    ReportSource,
    key_text,
    unwritable_failure,
)
from ._errors import JournalError
from ._summary import FailureGroup, JournalStatus, RunInfo, RunReport


class MemoryJournal(Journal):
    """Keeps item states in a dict; writes and commits the outputs on every ``record``."""

    def __init__(
        self,
        fingerprint: str = "",
        *,
        output: Output[Any] | None = None,
        failures: Output[Any] | None = None,
        force: bool = False,
    ) -> None:
        self.fingerprint = fingerprint
        self._outputs = {"results": output, "failures": failures}
        self._items: dict[Key, tuple[str, str | None, str | None]] = {}
        self._inflight: set[Key] = set()
        self._stats = JournalStats()
        self._mutex = threading.Lock()
        self._started = time.time()
        self._ended: float | None = None
        self._report_source: ReportSource | None = None
        self._report: RunReport | None = None  # the final one, once closed
        opened: list[Output[Any]] = []
        try:
            for out in (output, failures):
                if out is not None:
                    out.open(None, force=force)
                    opened.append(out)
        except BaseException:
            for out in opened:
                out.close()
            raise

    def _decide(self, keys: Sequence[Key], claim: bool) -> list[bool]:
        result = []
        seen: set[Key] = set()
        for key in keys:
            if key in self._inflight or key in seen or key in self._items:
                new = False
                self._stats.skipped_duplicate += claim
            else:
                new = True
            seen.add(key)
            result.append(new)
            if new and claim:
                self._inflight.add(key)
                self._stats.started += 1
        return result

    def filter_new(self, keys: Sequence[Key]) -> list[bool]:
        with self._mutex:
            return self._decide(keys, claim=False)

    def mark_started(self, keys: Sequence[Key]) -> list[bool]:
        with self._mutex:
            if self._ended is not None:
                raise JournalError("the journal is closed")
            return self._decide(keys, claim=True)

    def record(self, batch: Sequence[Record]) -> None:
        with self._mutex:
            if self._ended is not None:
                raise JournalError("the journal is closed")
            results, failures = self._outputs["results"], self._outputs["failures"]
            out_rows: list[Any] = []
            fail_rows: list[Any] = []
            for key, state, attempts, error, message, payload in batch:
                if key not in self._inflight and not self._decide([key], claim=True)[0]:
                    self._stats.ignored += 1
                    continue
                if state == DONE and results is not None:
                    try:
                        out_rows.append(results.encode(payload))
                    except UnwritableRecord as exc:
                        state, error, message = FAILED, type(exc).__name__, str(exc)
                        payload = unwritable_failure(key, exc, payload, attempts)
                        self._stats.unwritable += 1
                if state == FAILED:
                    if failures is not None:
                        fail_rows.append(failures.encode(payload))
                    self._stats.recorded_failed += 1
                else:
                    self._stats.recorded_done += 1
                self._items[key] = (state, error, message)
                self._inflight.discard(key)
            for out, rows in ((results, out_rows), (failures, fail_rows)):
                if out is not None and rows:
                    out.write(rows)
                    out.commit()
            self._stats.commits += 1

    def set_report_source(self, source: ReportSource | None) -> None:
        with self._mutex:
            self._report_source = source

    def _take_report(self, *, final: bool) -> RunReport | None:
        source = self._report_source
        report = report_from_json(source()) if source is not None else None
        return RunReport(1, time.time(), final, report) if report is not None else None

    def flush(self) -> None:
        """Nothing to do: every ``record`` commits."""

    def summary(self) -> JournalStatus:
        with self._mutex:
            groups: dict[str, list[Any]] = {}
            done = failed = 0
            for key, (state, error, message) in self._items.items():
                if state == DONE:
                    done += 1
                    continue
                failed += 1
                group = groups.setdefault(error or "?", [0, key, message or ""])
                group[0] += 1
            ended = self._ended
            report = self._report if ended is not None else self._take_report(final=False)
            run = RunInfo(
                1,
                self._started,
                ended,
                ended,
                done,
                failed,
                None,
                "finished" if ended is not None else "running",
            )
            return JournalStatus(
                path="<memory>",
                fingerprint=self.fingerprint,
                created=self._started,
                done=done,
                failed=failed,
                pending=0,
                in_flight=len(self._inflight),
                runs=(run,),
                failures=tuple(
                    FailureGroup(error, n, key_text(key), message)
                    for error, (n, key, message) in sorted(
                        groups.items(), key=lambda kv: (-kv[1][0], kv[0])
                    )
                ),
                outputs={
                    slot: out.identity for slot, out in self._outputs.items() if out is not None
                },
                report=report,
            )

    def stats(self) -> JournalStats:
        with self._mutex:
            s = self._stats
            return JournalStats(
                s.started,
                s.skipped_done,
                s.skipped_duplicate,
                s.recorded_done,
                s.recorded_failed,
                s.unwritable,
                s.ignored,
                s.commits,
                len(self._inflight),
            )

    def close(self) -> None:
        with self._mutex:
            if self._ended is not None:
                return
            self._ended = time.time()
            for out in self._outputs.values():
                if out is not None:
                    try:
                        out.commit(final=True)
                    finally:
                        out.close()
            self._report = self._take_report(final=True)
            self._report_source = None

    def __repr__(self) -> str:
        return f"<MemoryJournal {len(self._items)} recorded, {len(self._inflight)} in flight>"
