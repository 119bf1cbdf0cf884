"""Running ``spindle map`` as a user does, for the command-line tests of the connectors."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil


def spindle_map(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``spindle map ARGS --workers 2 -q`` in ``cwd``, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "spindle", "map", *args, "--workers", "2", "-q"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def refused_in_one_line(
    work: Path, args: list[str], expected: str, job: str = "jobs:shout"
) -> None:
    """``spindle map JOB ARGS`` (with ``in.txt`` of one line) exits 2 with one line of
    error that holds ``expected`` and no password (``pw``) of a URL."""
    (work / "in.txt").write_text("x\n")
    done = spindle_map(job, *args, cwd=work)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert "pw@" not in done.stderr


def workers_of(proc: subprocess.Popen[Any]) -> list[psutil.Process]:
    """The worker processes of a ``spindle map`` run, oldest first (the first ones are
    forked, so they have its command line; replacements run spindle's worker code)."""
    try:
        me = psutil.Process(proc.pid)
        command = me.cmdline()
        children = me.children()
    except psutil.Error:
        return []
    found: list[tuple[float, psutil.Process]] = []
    for child in children:
        try:
            line = child.cmdline()
            if line == command or any("spawned_main" in part for part in line):
                found.append((child.create_time(), child))
        except psutil.Error:  # gone meanwhile (a zombie not reaped yet)
            continue
    return [child for _, child in sorted(found, key=lambda pair: pair[0])]


def kill_a_worker(proc: subprocess.Popen[Any], spare: int | None = None) -> None:
    """SIGKILL the oldest worker of ``proc`` (surely past its start) but the one of
    pid ``spare``, and wait until the run has reaped it."""
    workers = [w for w in workers_of(proc) if w.pid != spare]
    assert workers, "the run has no worker to kill"
    victim = workers[0]
    victim.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs([victim], timeout=30)  # gone once the run has reaped it
    assert alive == []
