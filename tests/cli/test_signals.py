"""Ctrl-C and SIGTERM on `spindle map`, as a user at a terminal would send them."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

JOB = """
import os, time

def slow(line):
    fifo = os.environ.get("SPINDLE_TEST_FIFO")
    if fifo:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"x")
        os.close(fd)
    time.sleep(float(os.environ.get("SPINDLE_TEST_SLEEP", "0.3")))
    return line

def hang_on_3(line):
    if line == "3":
        while True:
            pass
    return line
"""


def start(work: Path, *args: str, sleep: float) -> tuple[subprocess.Popen[str], int]:
    fifo = work / "started"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    env = dict(os.environ, SPINDLE_TEST_FIFO=str(fifo), SPINDLE_TEST_SLEEP=str(sleep))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spindle",
            "map",
            "myjobs:slow",
            "nums.txt",
            "-o",
            "out.jsonl",
            "--workers",
            "2",
            *args,
        ],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Wait until a job has started (it writes to the FIFO), not for some time.
    ready, _, _ = select.select([reader], [], [], 60)
    assert ready, "no job started within 60 s"
    return proc, reader


def finish(proc: subprocess.Popen[str], reader: int, timeout: float) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        os.close(reader)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return err


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "myjobs.py").write_text(JOB)
    (tmp_path / "nums.txt").write_text("".join(f"{i}\n" for i in range(200)))
    return tmp_path


def check_output_lines_whole(path: Path) -> int:
    lines = path.read_text().splitlines()
    for line in lines:
        record = json.loads(line)  # every line is a whole JSON record
        assert record["input"] == record["result"]
    return len(lines)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_first_signal_drains_jobs_in_flight_then_exits(
    work: Path, sig: signal.Signals, status: int
) -> None:
    proc, reader = start(work, "--grace", "10", sleep=0.3)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(sig)
    err = finish(proc, reader, timeout=30)
    assert proc.returncode == status, err
    assert "stopping: no new jobs" in err
    assert "interrupted after" in err
    written = check_output_lines_whole(work / "out.jsonl")
    assert 0 < written < 200
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert alive == []


def test_second_ctrl_c_stops_at_once(work: Path) -> None:
    # Jobs of a minute and a grace of two minutes: only the second Ctrl-C ends it soon.
    proc, reader = start(work, "--grace", "120", sleep=60)
    workers = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    for _ in range(50):  # progress lines may come first
        line = proc.stderr.readline()
        if "stopping" in line or not line:
            break
    assert "stopping" in line  # the first Ctrl-C was handled
    proc.send_signal(signal.SIGINT)
    err = finish(proc, reader, timeout=10)
    assert proc.returncode == 130, err
    assert "interrupted after" in err
    _, alive = psutil.wait_procs(workers, timeout=5)
    assert alive == []


def test_timeout_and_retries_flags(work: Path) -> None:
    (work / "few.txt").write_text("1\n2\n3\n4\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spindle",
            "map",
            "myjobs:hang_on_3",
            "few.txt",
            "-o",
            "o.jsonl",
            "--timeout",
            "0.5",
            "--retries",
            "1",
            "--max-jobs-per-worker",
            "100",
            "--max-memory-per-worker",
            "1GB",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    failures = [json.loads(x) for x in (work / "o.jsonl.failures.jsonl").read_text().splitlines()]
    assert [(f["input"], f["error"], f["attempts"]) for f in failures] == [("3", "Timeout", 2)]
    assert len((work / "o.jsonl").read_text().splitlines()) == 3


def test_bad_memory_size_is_a_usage_error(work: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spindle",
            "map",
            "myjobs:slow",
            "nums.txt",
            "-o",
            "o.jsonl",
            "--max-memory-per-worker",
            "lots",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "cannot read memory size 'lots'" in out.stderr
