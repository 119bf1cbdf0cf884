"""What a journal's summary holds: its totals, its runs, its failures and a run's report.

Plain frozen data, apart from reading and showing it (:mod:`._status`), so that the journal
interface (:mod:`._base`), the journals and ``status`` all import it and none of them
imports another to get it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from ..observe.report import Report

__all__ = ["FailureGroup", "JournalStatus", "RunInfo", "RunReport"]


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """Failed items that share an error type, with one of them as the example."""

    error: str
    count: int
    example_key: str
    example_message: str


@dataclass(frozen=True, slots=True)
class RunInfo:
    """One run of the command over this journal (one process, from open to close).

    ``state`` is ``"running"``, ``"finished"`` (closed cleanly) or ``"interrupted"``
    (the process died or was killed before closing the journal).
    """

    id: int
    started: float
    ended: float | None
    last_commit: float | None
    done: int
    failed: int
    pid: int | None
    state: str

    @property
    def elapsed(self) -> float:
        """Seconds from start to close, or to the last commit if it never closed."""
        if self.state == "running":
            end = time.time()
        else:
            end = self.ended or self.last_commit or self.started
        return max(0.0, end - self.started)


@dataclass(frozen=True, slots=True)
class RunReport:
    """The report a run stored in the journal: what ``--stats-json`` writes, as of
    ``stored`` (a wall-clock time).

    ``final`` is True when the run stored it as it ended (closing the journal, also
    after Ctrl-C); otherwise a commit stored it (the run is still going, or its process
    died), at most a second before the run's last commit.
    """

    run: int
    stored: float
    final: bool
    report: Report


@dataclass(frozen=True, slots=True)
class JournalStatus:
    """Everything ``status`` shows. ``throughput`` is items recorded per second of run time."""

    path: str
    fingerprint: str
    created: float | None
    done: int
    failed: int
    pending: int
    in_flight: int
    runs: tuple[RunInfo, ...]
    failures: tuple[FailureGroup, ...]
    outputs: dict[str, str]
    report: RunReport | None = None

    @property
    def total(self) -> int:
        return self.done + self.failed + self.pending

    @property
    def elapsed(self) -> float:
        return sum(run.elapsed for run in self.runs)

    @property
    def throughput(self) -> float:
        elapsed = self.elapsed
        recorded = sum(run.done + run.failed for run in self.runs)
        return recorded / elapsed if elapsed > 0 else 0.0

    @property
    def running(self) -> bool:
        return any(run.state == "running" for run in self.runs)

    def report_state(self) -> str:
        """How the run of :attr:`report` stands: ``"ended"`` (the report is its final
        one), ``"running"``, or ``"interrupted"`` (its process died: the report is the
        last one a commit stored). Empty without a report."""
        stored = self.report
        if stored is None:
            return ""
        if stored.final:
            return "ended"
        state = next((run.state for run in self.runs if run.id == stored.run), "interrupted")
        return "running" if state == "running" else "interrupted"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``spindle status --json``)."""
        return {
            "path": self.path,
            "fingerprint": self.fingerprint,
            "created": self.created,
            "running": self.running,
            "totals": {
                "done": self.done,
                "failed": self.failed,
                "pending": self.pending,
                "in_flight": self.in_flight,
                "total": self.total,
            },
            "elapsed_seconds": round(self.elapsed, 3),
            "throughput_per_second": round(self.throughput, 3),
            "runs": [
                {**asdict(run), "elapsed_seconds": round(run.elapsed, 3)} for run in self.runs
            ],
            "failures": [asdict(group) for group in self.failures],
            "outputs": dict(self.outputs),
            "report": self.report.report if self.report is not None else None,
            "report_run": (
                {
                    "run": self.report.run,
                    "state": self.report_state(),
                    "final": self.report.final,
                    "stored": self.report.stored,
                }
                if self.report is not None
                else None
            ),
        }
