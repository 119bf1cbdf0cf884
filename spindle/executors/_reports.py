"""Worker reports: a stage's own figures, made in each worker and merged in the parent.

A stage may name a *reporter*, a function called inside each worker with that
worker's state (what ``init`` returned) that returns a small plain dict: requests per
host for a fetch stage, cache hits for a job that keeps a cache. The executor keeps
the latest report of every worker, and the stage's *merge* function turns them into
one dict when a snapshot is taken::

    worker (a process, a thread, the io loop)                     parent
    ─────────────────────────────────────────                     ──────
    reporter(state) -> dict ─── at most once a second ───▶ ReportBook: latest per worker
      after a batch (sync), from a timer (async),                   │  (ended workers' kept)
      once more when the worker stops                                ▼
                                                 snapshot(): merge([ended..., live...])

Reports cost nothing when a stage has no reporter: no timer, no frame, one ``is None``
test per batch. With one, a worker makes a report at most once a second, never per
item: a process sends it as one REPORT frame (see ``_wire``), skipped when it has not
changed since the last one. Each worker makes a last report when it stops normally
(end of the run, retirement), so figures are complete at the end of a run; a worker
that is killed keeps its last report from up to a second before.

A reporter that raises, or returns something other than a picklable dict, is a bug
in that function: its worker prints the traceback once on stderr and stops reporting,
and the run goes on.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Hashable
from typing import Any

from .._errors import SpindleError

Report = dict[str, Any]
ReporterFn = Callable[[Any], Report]
MergeFn = Callable[[list[Report]], Report]

#: Seconds between two reports of one worker, at least.
REPORT_EVERY = 1.0
#: Reports of ended workers kept apart before they are merged into one.
_ENDED_KEPT = 64
_PROTOCOL = 5


def sum_reports(reports: list[Report]) -> Report:
    """The default merge: numbers added key by key (nested dicts too); for any other
    value the last report's wins."""
    out: Report = {}
    for report in reports:
        _add_into(out, report)
    return out


def _add_into(out: Report, report: Report) -> None:
    for key, value in report.items():
        old = out.get(key)
        if _is_number(value) and _is_number(old):
            out[key] = old + value
        elif isinstance(value, dict) and isinstance(old, dict):
            _add_into(old, value)
        elif isinstance(value, dict):
            out[key] = {}
            _add_into(out[key], value)
        else:
            out[key] = value


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Reporter:
    """The worker's side: calls the stage's reporter when one is due."""

    def __init__(self, fn: ReporterFn, stage: str, every: float = REPORT_EVERY) -> None:
        self.fn: ReporterFn | None = fn
        self.stage = stage
        self.every = every
        self._next_at = 0.0
        self._last: bytes | None = None

    def due(self) -> bool:
        return self.fn is not None and time.monotonic() >= self._next_at

    def make(self, state: Any) -> Report | None:
        """A fresh report, or None once the reporter has failed."""
        fn = self.fn
        if fn is None:
            return None
        self._next_at = time.monotonic() + self.every
        try:
            report = fn(state)
            if not isinstance(report, dict):
                raise TypeError(f"a reporter must return a dict, not {type(report).__name__}")
        except Exception:
            self._give_up()
            return None
        return report

    def encode(self, state: Any) -> bytes | None:
        """A report pickled for the wire; None when it failed or has not changed."""
        report = self.make(state)
        if report is None:
            return None
        try:
            payload = pickle.dumps(report, protocol=_PROTOCOL)
        except Exception:
            self._give_up()
            return None
        if payload == self._last:
            return None
        self._last = payload
        return payload

    def _give_up(self) -> None:
        self.fn = None
        # A worker whose stderr is closed runs on all the same.
        with contextlib.suppress(OSError, ValueError):
            print(
                f"spindle: the reporter of stage {self.stage!r} failed in a worker; this "
                "worker sends no more reports (the run goes on):",
                file=sys.stderr,
            )
            traceback.print_exc()


def state_or_none(state: Any, unset: Any) -> Any:
    """What a reporter gets: the worker's state, or None for a stage without ``init``."""
    return None if state is unset else state


class ReportBook:
    """The parent's side: the latest report of each worker, merged on demand.

    Workers report from their own threads (thread stages), so every change and
    read holds a lock (``merged()`` merges outside it). ``merged()`` hands the merge
    function the reports of ended workers first (oldest first), then those of live
    workers in the order they started, so a merge that keeps "the last value" of a
    gauge keeps a live worker's.
    """

    def __init__(self, stage: str, merge: MergeFn | None) -> None:
        self.stage = stage
        self.merge: MergeFn = merge or sum_reports
        self.received = 0
        self._live: dict[Hashable, Report] = {}
        self._ended: list[Report] = []
        self._lock = threading.Lock()

    def update(self, worker: Hashable, report: Report) -> None:
        with self._lock:
            self._live[worker] = report
            self.received += 1

    def take(self, worker: Hashable, payload: bytes, where: str) -> None:
        """:meth:`update` with a report as the worker pickled it. One that cannot be
        unpickled ``where`` it arrived (a class the parent or driver cannot import) is
        worth a warning, not the run."""
        try:
            report = pickle.loads(payload)
        except Exception as exc:
            warnings.warn(
                f"a report of stage {self.stage!r} could not be unpickled in the {where} "
                f"({type(exc).__name__}: {exc}); reporters should return plain data",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        self.update(worker, report)

    def end(self, worker: Hashable) -> None:
        """The worker stopped: its last report counts for good.

        Ended workers' reports are merged into one every ``_ENDED_KEPT``, so a run
        that replaces many workers holds a bounded number. If the merge fails here
        they stay apart: the same failure is raised by the next ``merged()``, where
        a snapshot reports it; a worker's exit is no place to raise it.
        """
        with self._lock:
            report = self._live.pop(worker, None)
            if report is None:
                return
            self._ended.append(report)
            if len(self._ended) >= _ENDED_KEPT:
                with contextlib.suppress(SpindleError):
                    self._ended = [self._merge(self._ended)]

    def merged(self) -> Report | None:
        """Every worker's latest report merged into one; None before the first."""
        with self._lock:
            reports = [*self._ended, *self._live.values()]
        if not reports:
            return None
        return self._merge(reports)

    def _merge(self, reports: list[Report]) -> Report:
        try:
            merged = self.merge(reports)
        except Exception as exc:
            raise SpindleError(
                f"the merge_reports function of stage {self.stage!r} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(merged, dict):
            raise SpindleError(
                f"the merge_reports function of stage {self.stage!r} must return a dict, "
                f"not {type(merged).__name__}"
            )
        return merged
