"""Run CPython's tests against spindle: ``concurrent.futures``' against ``spindle.Executor``,
``multiprocessing``'s Pool tests against ``spindle.Pool``; print a summary.

::

    python tests_cpython/run.py [-m MODULE ...] [-k SUBSTRING] [--per-test-timeout S]
                                [--run-bugs] [--json PATH] [-v]

Each module (``concurrent.futures``' ``as_completed``, ``wait``, ``shutdown``, ``init``,
``process_pool``, ``deadlock``, ``thread_pool``, ``future``; the Pool suite's ``pool``)
runs in a child process of its own, so that a test that hangs or kills its interpreter
cannot hold or end the run:

::

    parent ──ids──▶ child (one module) ──one JSON line per test start / end──▶ parent
      ▲                 │ faulthandler.dump_traceback_later(limit, exit=True) per test
      └── the child exits mid-test: that test "hung" (its stacks are the report),
          a new child runs the module's remaining tests

Each child is the leader of a new process group, which the parent kills once the child
has exited, so that a worker orphaned by a hung test does not outlive the run.

A test is *passed* (unchanged), *adapted* (passed with an adaptation of
``decisions.py``), *skipped by design* (spindle differs on purpose, or the test
inspects the standard executors' internals), *skipped as a bug* (a gap in spindle,
reason ``bug: ...``; ``--run-bugs`` runs them, to check a fix), *skipped by CPython*
(its own conditions: platform, start method) or *failed* (failure, error, unexpected
success, hang). The exit status is 1 when any test failed, or a child failed outside
a test.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import unittest
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from test import support  # type: ignore[import-not-found]

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the package importable
    sys.path.insert(0, str(ROOT))

#: Where a hung test's stacks go: the child's standard error by descriptor, since a
#: test may replace ``sys.stderr`` (with a StringIO, which has no descriptor).
_STDERR = 2

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]

#: Set (to anything) to run the tests skipped as bugs: ``--run-bugs``.
RUN_BUGS = "SPINDLE_CPYTHON_RUN_BUGS"

CATEGORIES = ("passed", "adapted", "design", "bug", "cpython", "failed")
HEADINGS = {
    "passed": "passed",
    "adapted": "adapted",
    "design": "skip:design",
    "bug": "skip:bug",
    "cpython": "skip:cpython",
    "failed": "failed",
}


# -- the child: one module's tests, one JSON line per event ----------------------------


class _JsonResult(unittest.TestResult):
    """Writes each test's start and outcome as it happens, and bounds each test."""

    def __init__(self, out: TextIO, limit: float) -> None:
        super().__init__()
        self._out = out
        self._limit = limit
        self._outcome: dict[str, Any] = {}
        self._started = 0.0
        self._warnings: list[str] = []
        # CPython's leak checks report through ``support.print_warning``: kept per
        # test, and printed where that function prints (the child's log).
        self._stream = support.print_warning.orig_stderr
        support.print_warning = self.warn

    def _write(self, record: dict[str, Any]) -> None:
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        self._warnings = []
        self._outcome = {"outcome": "pass", "detail": ""}
        self._write({"event": "start", "id": test.id()})
        self._started = time.monotonic()
        faulthandler.dump_traceback_later(self._limit, exit=True, file=_STDERR)

    def stopTest(self, test: unittest.TestCase) -> None:
        # Still armed, now for what follows: class and module clean-ups, the exit.
        faulthandler.dump_traceback_later(self._limit, exit=True, file=_STDERR)
        elapsed = time.monotonic() - self._started
        record = {"event": "end", "id": test.id(), "time": round(elapsed, 3), **self._outcome}
        record["warnings"] = self._warnings
        self._write(record)
        super().stopTest(test)

    def warn(self, message: str) -> None:
        self._warnings.append(message)
        for line in message.splitlines():
            print(f"Warning -- {line}", file=self._stream, flush=True)

    def _failed(self, kind: str, test: Any, err: _ExcInfo) -> None:
        text = "".join(traceback.format_exception(err[1])) if err[1] is not None else ""
        if not isinstance(test, unittest.TestCase):  # a module or class fixture
            self._write({"event": "fixture", "id": str(test), "outcome": kind, "detail": text})
            return
        if self._outcome.get("outcome") in ("fail", "error"):
            text = self._outcome["detail"] + "\n" + text
        self._outcome = {"outcome": kind, "detail": text}

    def done(self) -> None:
        self._write({"event": "done"})

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._failed("error", test, err)

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._failed("fail", test, err)

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            self._failed(kind, test, err)

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._outcome = {"outcome": "skip", "detail": reason}

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._outcome = {"outcome": "fail", "detail": "unexpected success"}


def child(module: str, ids_path: str, out_path: str, limit: float) -> int:
    """Run the tests of ``module`` named in ``ids_path``, writing to ``out_path``."""
    from tests_cpython import suites

    support.verbose = 0  # CPython's mixins print each test's duration when verbose
    wanted = set(Path(ids_path).read_text().split())
    tests = [test for test in suites.iter_tests(module) if test.id() in wanted]
    with open(out_path, "a", encoding="utf-8") as out:
        result = _JsonResult(out, limit)
        unittest.TestSuite(tests).run(result)
        result.done()
    return 0  # the exit itself stays bounded: the last test re-armed the watchdog


# -- the parent: one child per module, re-run after a hang, then the summary -----------


@dataclass
class Meta:
    """What the parent knows of a test before it runs: where it counts."""

    suite: str
    module: str
    flavor: str
    owner: str
    adapted: bool


@dataclass
class Record:
    id: str
    meta: Meta
    outcome: str  # pass, skip, fail, error, hang
    detail: str = ""
    time: float = 0.0
    #: What CPython's leak checks reported after the test (threads, children left).
    warnings: list[str] = field(default_factory=list)
    category: str = field(init=False)

    def __post_init__(self) -> None:
        if self.outcome == "pass":
            self.category = "adapted" if self.meta.adapted else "passed"
        elif self.outcome == "skip":
            self.category = (
                "bug"
                if self.detail.startswith("bug:")
                else "design"
                if self.detail.startswith("design:")
                else "cpython"
            )
        else:
            self.category = "failed"

    def as_json(self) -> dict[str, Any]:
        meta = self.meta
        return {
            "id": self.id,
            "suite": meta.suite,
            "module": meta.module,
            "flavor": meta.flavor,
            "owner": meta.owner,
            "adapted": meta.adapted,
            "category": self.category,
            "outcome": self.outcome,
            "detail": self.detail,
            "time": self.time,
            "warnings": self.warnings,
        }


def collect(modules: list[str], pattern: str | None) -> dict[str, dict[str, Meta]]:
    """Every selected test of each module, by id, with its flavour and owner."""
    from tests_cpython import decisions, suites

    selected: dict[str, dict[str, Meta]] = {}
    for module in modules:
        tests: dict[str, Meta] = {}
        for test in suites.iter_tests(module):
            if pattern and pattern not in test.id():
                continue
            method = getattr(test, test._testMethodName)
            tests[test.id()] = Meta(
                suites.suite_of(module),
                module,
                suites.flavor_of(type(test)),
                decisions.owner_of(type(test), test._testMethodName),
                decisions.is_adapted(method),
            )
        selected[module] = tests
    return selected


def _kill_group(pgid: int) -> None:
    """Kill what is left of a child's process group (workers of a hung test)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_module(
    module: str, tests: dict[str, Meta], limit: float, workdir: Path, verbose: bool
) -> tuple[list[Record], list[str]]:
    """Run a module's tests in children until each has an outcome; the records, and
    the errors outside any test (fixtures, a child's exit)."""
    records: dict[str, Record] = {}
    problems: list[str] = []
    attempt = 0
    while remaining := [t for t in tests if t not in records]:
        attempt += 1
        ids = workdir / f"{module}.{attempt}.ids"
        out = workdir / f"{module}.{attempt}.jsonl"
        log = workdir / f"{module}.{attempt}.log"
        ids.write_text("\n".join(remaining))
        status = _run_child(module, ids, out, log, limit, len(remaining))
        events = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        started: str | None = None
        finished = False
        for event in events:
            if event["event"] == "start":
                started = event["id"]
            elif event["event"] == "end":
                started = None
                record = Record(
                    event["id"],
                    tests[event["id"]],
                    event["outcome"],
                    event["detail"],
                    event["time"],
                    event["warnings"],
                )
                records[record.id] = record
                if verbose:
                    print(f"  {record.id}: {record.outcome} ({record.time:.2f}s)", flush=True)
            elif event["event"] == "fixture":
                problems.append(f"{event['id']}: {event['detail']}")
            elif event["event"] == "done":
                finished = True
        log_text = log.read_text(errors="replace")
        timed_out = "Timeout (" in log_text
        if started is None and not finished:  # the child ended between tests
            started = next((t for t in remaining if t not in records), None)
        if started is not None:
            what = f"hung (limit {limit:.0f}s)" if timed_out else "its interpreter exited"
            detail = f"{what}; exit status {status}\n{_tail(log_text)}"
            records[started] = Record(started, tests[started], "hang", detail, limit)
            if verbose:
                print(f"  {started}: {what}", flush=True)
        elif status != 0:
            what = "hung" if timed_out else f"exited with status {status}"
            problems.append(f"{module}: after its last test, the child {what}\n{_tail(log_text)}")
    return [records[t] for t in tests], problems


def _run_child(module: str, ids: Path, out: Path, log: Path, limit: float, count: int) -> int:
    """Run one child over the tests named in ``ids``; its exit status."""
    argv = [sys.executable, __file__, "--child", module, str(ids), str(out), str(limit)]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            proc.wait(limit * (count + 1) + 60)  # a backstop: each test has its limit
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
        _kill_group(proc.pid)
    return proc.returncode


def _tail(text: str, lines: int = 60) -> str:
    """The end of a child's output, from the faulthandler dump when there is one."""
    start = text.rfind("Timeout (")
    chunk = text[start:] if start >= 0 else text
    return "\n".join(chunk.splitlines()[-lines:])


def _summary_line(label: str, counts: dict[str, int], seconds: float) -> str:
    cells = "".join(f"{counts.get(c, 0):>13}" for c in CATEGORIES)
    return f"{label:<26}{cells}{seconds:>10.1f}s"


def report(records: list[Record], fixtures: list[str], elapsed: float) -> int:
    """Print the summary (per module and flavour, a subtotal per suite) and the
    failures; the exit status."""
    rows: dict[str, dict[tuple[str, str], dict[str, int]]] = defaultdict(dict)
    times: dict[tuple[str, str], float] = defaultdict(float)
    for record in records:
        key = (record.meta.module, record.meta.flavor)
        counts = rows[record.meta.suite].setdefault(key, defaultdict(int))
        counts[record.category] += 1
        times[key] += record.time
    print()
    print(f"{'module / flavour':<26}" + "".join(f"{HEADINGS[c]:>13}" for c in CATEGORIES))
    total: dict[str, int] = defaultdict(int)
    for suite, suite_rows in rows.items():
        print(suite)
        subtotal: dict[str, int] = defaultdict(int)
        for key, counts in suite_rows.items():
            print(_summary_line(f"  {key[0]} / {key[1]}", counts, times[key]))
            for category, n in counts.items():
                subtotal[category] += n
                total[category] += n
        seconds = sum(times[key] for key in suite_rows)
        print(_summary_line("  subtotal", subtotal, seconds))
    print(_summary_line("total", total, sum(times.values())))
    print(f"\n{len(records)} tests in {elapsed:.1f}s (wall clock)")
    leaky = [r for r in records if r.warnings]
    if leaky:
        print(f"{len(leaky)} test(s) left a thread or a child process behind:")
        for record in leaky:
            print(f"  {record.id}: {record.warnings[0]}")
    failed = [r for r in records if r.category == "failed"]
    for record in failed:
        print(f"\nFAILED ({record.outcome}) {record.id}  [{record.meta.owner}]")
        lines = record.detail.strip().splitlines()
        shown = lines[-30:] if len(lines) > 30 else lines  # the whole of it: --json
        print("    " + "\n    ".join(shown))
    for fixture in fixtures:
        print(f"\nFIXTURE ERROR {fixture}")
    return 1 if failed or fixtures else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--child"]:
        return child(args[1], args[2], args[3], float(args[4]))
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-m", "--module", action="append", help="a CPython test module")
    parser.add_argument("-k", dest="pattern", help="only tests whose id contains this")
    parser.add_argument("--per-test-timeout", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument(
        "--run-bugs", action="store_true", help="run the tests skipped as bugs (to check a fix)"
    )
    parser.add_argument("--json", type=Path, help="write every test's record here")
    parser.add_argument("-v", "--verbose", action="store_true")
    options = parser.parse_args(args)
    if options.run_bugs:  # read by decisions.apply, here and in the children
        os.environ[RUN_BUGS] = "1"
    from tests_cpython import suites

    modules = options.module or list(suites.MODULES)
    if unknown := set(modules) - set(suites.MODULES):
        parser.error(f"unknown module(s) {sorted(unknown)}; choose from {list(suites.MODULES)}")
    selected = collect(modules, options.pattern)
    records: list[Record] = []
    problems: list[str] = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spindle-cpython-tests-") as workdir:
        for module in modules:
            if not selected[module]:
                continue
            began = time.monotonic()
            print(f"{module}: {len(selected[module])} tests", flush=True)
            got, errors = run_module(
                module, selected[module], options.per_test_timeout, Path(workdir), options.verbose
            )
            records += got
            problems += errors
            print(f"{module}: done in {time.monotonic() - began:.1f}s", flush=True)
    elapsed = time.monotonic() - start
    if options.json:
        options.json.write_text(json.dumps([r.as_json() for r in records], indent=1))
    return report(records, problems, elapsed)


if __name__ == "__main__":
    sys.exit(main())
