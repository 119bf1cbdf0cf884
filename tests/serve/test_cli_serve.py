"""``spindle serve`` as a user runs it: a process of its own, signals, a journal, a flood."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from ._client import get, post

ROOT = Path(__file__).resolve().parents[2]


class Cli:
    """A ``spindle serve`` process in a session of its own (so its workers can be
    killed with it), its URL read from its first line."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spindle", "serve", *args, "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        self.url = ""
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stderr, selectors.EVENT_READ)
            while not self.url:
                if not sel.select(timeout=60):
                    self.kill()
                    raise AssertionError(f"spindle serve did not start: {self.lines}")
                line = self.proc.stderr.readline().decode()
                if not line:
                    self.proc.wait(10)
                    raise AssertionError(f"spindle serve exited: {self.lines}")
                self.lines.append(line)
                if " on http://" in line:
                    self.url = line.split(" on ", 1)[1].split(" ", 1)[0]

    def rest(self) -> str:
        assert self.proc.stderr is not None
        out = self.proc.stderr.read().decode()
        self.proc.stderr.close()
        return "".join(self.lines) + out

    def kill(self) -> None:
        """SIGKILL the server and its workers, all at once."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def clis() -> Iterator[list[Cli]]:
    started: list[Cli] = []
    yield started
    for cli in started:
        if cli.proc.poll() is None:
            cli.kill()


def test_sigterm_finishes_in_flight_jobs_and_exits_0(clis: list[Cli], tmp_path: Path) -> None:
    cli = Cli("tests.serve.jobs:counted", "--workers", "1", "--batch-size", "1", "--grace", "30")
    clis.append(cli)
    gate = tmp_path / "gate"
    log = tmp_path / "log"
    job = post(cli.url, "/jobs", {"n": 4, "log": str(log), "gate": str(gate)}).json()["id"]
    assert _until(lambda: log.exists()), "the job never started"
    cli.proc.send_signal(signal.SIGTERM)
    # The signal arrives when it arrives: wait until the server says it is stopping.
    assert _until(lambda: get(cli.url, "/healthz").status == 503), "never stopping"
    assert post(cli.url, "/run", 1).status == 503
    answer = get(cli.url, f"/jobs/{job}?wait=0.01").json()
    assert answer["state"] == "running"
    gate.touch()
    assert cli.proc.wait(60) == 0
    assert "stopped: 1 jobs done" in cli.rest()


def test_a_sigkilled_server_restarted_with_its_journal_answers_every_id_once(
    clis: list[Cli], tmp_path: Path
) -> None:
    journal = tmp_path / "serve.journal"
    gate = tmp_path / "gate"
    log = tmp_path / "log"
    args = ("tests.serve.jobs:counted", "--workers", "2", "--journal", str(journal))
    first = Cli(*args)
    clis.append(first)
    # 20 quick jobs that finish before the kill, then 30 that wait for the gate.
    quick = post(first.url, "/jobs", ndjson=[{"n": n, "log": str(log)} for n in range(20)]).json()[
        "ids"
    ]
    for job_id in quick:
        assert get(first.url, f"/jobs/{job_id}?wait=20").json()["state"] == "done"
    slow = [
        post(first.url, "/jobs", {"n": n, "log": str(log), "gate": str(gate)}).json()["id"]
        for n in range(20, 50)
    ]
    keyed = post(
        first.url,
        "/jobs",
        {"n": 50, "log": str(log), "gate": str(gate)},
        headers={"Idempotency-Key": "k-50"},
    ).json()["id"]
    first.kill()

    gate.touch()
    second = Cli(*args)
    clis.append(second)
    ids = quick + slow + [keyed]
    answers = {i: get(second.url, f"/jobs/{i}?wait=30").json() for i in ids}
    assert all(a["state"] == "done" for a in answers.values()), answers
    assert sorted(a["result"] for a in answers.values()) == [n * 10 for n in range(51)]
    # The same key after the restart: the same id, not a new job.
    again = post(
        second.url,
        "/jobs",
        {"n": 50, "log": str(log), "gate": str(gate)},
        headers={"Idempotency-Key": "k-50"},
    )
    assert again.json()["id"] == keyed
    runs = [int(line) for line in log.read_text().split()]
    # A job answered before the kill never ran again.
    assert sorted(n for n in runs if n < 20) == list(range(20))
    assert set(runs) == set(range(51))
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(60) == 0
    second.rest()


def test_a_flood_past_max_queue_gets_429_and_memory_stays_flat(
    clis: list[Cli], tmp_path: Path
) -> None:
    gate = tmp_path / "never"
    cli = Cli(
        "tests.serve.jobs:wait_for_file",
        "--workers",
        "1",
        "--batch-size",
        "1",
        "--max-queue",
        "50",
        "--grace",
        "0",
    )
    clis.append(cli)
    server = psutil.Process(cli.proc.pid)

    async def flood(n: int) -> dict[int, int]:
        import aiohttp

        counts: dict[int, int] = {}
        body = {"path": str(gate), "n": 1}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(path: str) -> None:
                async with session.post(cli.url + path, json=body) as r:
                    await r.read()
                    counts[r.status] = counts.get(r.status, 0) + 1

            sem = asyncio.Semaphore(100)

            async def limited(i: int) -> None:
                async with sem:
                    await one("/jobs" if i % 2 else "/run")

            await asyncio.gather(*(limited(i) for i in range(n)))
        return counts

    # Fill the queue with jobs that never end, then flood it with more.
    for n in range(50):
        assert post(cli.url, "/jobs", {"path": str(gate), "n": n}).status == 202
    assert asyncio.run(flood(2_000)) == {429: 2_000}
    before = server.memory_info().rss
    counts = asyncio.run(flood(20_000))
    after = server.memory_info().rss
    assert counts == {429: 20_000}
    assert after - before < 20 * 2**20, (before, after)
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.proc.wait(60) == 0
    cli.rest()


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "spindle", "serve", "tests.serve.jobs:echo", "--host", "0.0.0.0"],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 2
    assert b"token" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "spindle", "serve", "tests.serve.jobs:nope"],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 2
    assert b"nope" in run.stderr


def _until(predicate: Any, timeout: float = 30.0) -> bool:
    import threading

    event = threading.Event()
    for _ in range(int(timeout / 0.01)):
        try:
            if predicate():
                return True
        except OSError:
            pass
        event.wait(0.01)
    return False


def test_ctrl_c_to_the_whole_group_exits_0_and_leaves_no_worker(clis: list[Cli]) -> None:
    cli = Cli("tests.serve.jobs:whoami", "--workers", "2")
    clis.append(cli)
    pids = {post(cli.url, "/run", i).json()["result"] for i in range(20)}
    os.killpg(cli.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert cli.proc.wait(60) == 0
    assert "stopped:" in cli.rest()
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not alive
