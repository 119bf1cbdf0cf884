"""``spindle fetch --journal``: a killed or finished fetch resumes by running it again."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import signal
import sqlite3
import sys
from pathlib import Path

import pytest
from aiohttp import web

from ._leftovers import no_stray_threads_or_children  # noqa: F401 - a fixture
from .test_fetch_command import read_jsonl, refused_url, spindle_fetch

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_stray_threads_or_children")]


async def page(request: web.Request) -> web.StreamResponse:
    return web.Response(text=f"page {request.match_info['n']}")


async def write_urls(path: Path, urls: list[str]) -> None:
    await asyncio.to_thread(path.write_text, "\n".join(urls) + "\n")


def journal_totals(path: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT state, n FROM totals").fetchall())


@pytest.mark.asyncio
async def test_a_finished_fetch_run_again_fetches_nothing(serve, tmp_path: Path) -> None:
    server = await serve({"/page/{n}": page})
    urls = [server.url(f"/page/{n}") for n in range(40)]
    await write_urls(tmp_path / "urls.txt", [*urls, urls[0], urls[1], "not a url"])
    args = ["urls.txt", "-o", "out.jsonl", "--journal", "j.db", "-q", "--robots", "ignore"]

    code, _, err = await spindle_fetch(*args, cwd=tmp_path)

    assert code == 1, err  # the invalid URL failed
    assert server.count() == 40  # the two repeated URLs were fetched once
    records = await asyncio.to_thread(read_jsonl, tmp_path / "out.jsonl")
    assert sorted(r["url"] for r in records) == sorted(urls)
    assert all(r["status"] == 200 and r["text"].startswith("page ") for r in records)
    failures = await asyncio.to_thread(read_jsonl, tmp_path / "out.jsonl.failures.jsonl")
    assert [(f["input"], f["message"]) for f in failures] == [
        ("not a url", "invalid URL: 'not a url' (no scheme; only http and https are fetched)")
    ]
    assert "2 duplicates" in err

    code, _, err = await spindle_fetch(*args, cwd=tmp_path)

    assert code == 1, err  # the failure is still recorded
    assert server.count() == 40  # nothing fetched again
    # Every occurrence of an input recorded before counts as recorded, repeats included.
    assert "skipped 43 already recorded and 0 duplicates" in err
    again = await asyncio.to_thread(read_jsonl, tmp_path / "out.jsonl")
    assert sorted(r["url"] for r in again) == sorted(urls)


@pytest.mark.asyncio
async def test_a_killed_fetch_resumes_with_one_record_per_url(serve, tmp_path: Path) -> None:
    async def slowish(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.02)
        return web.Response(text=f"page {request.match_info['n']}")

    server = await serve({"/page/{n}": slowish})
    urls = [server.url(f"/page/{n}") for n in range(300)]
    await write_urls(tmp_path / "urls.txt", urls)
    args = ["urls.txt", "-o", "out.jsonl", "--journal", "j.db", "-q", "--robots", "ignore",
            "--workers", "1", "--concurrency", "2", "--per-host", "2"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spindle", "fetch", *args, cwd=tmp_path,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # 200 answers at 2 in flight and 20 ms each take two seconds: records have
        # been flowing past the journal's one-second group commit.
        while server.count() < 200:
            server.meter.changed.clear()  # set again by the next request to arrive
            await asyncio.wait_for(server.meter.changed.wait(), 30)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    first = server.count()
    totals = await asyncio.to_thread(journal_totals, tmp_path / "j.db")
    assert 0 < totals["done"] < 300, totals

    code, _, err = await spindle_fetch(*args, cwd=tmp_path)

    assert code == 0, err
    assert server.count() - first == 300 - totals["done"]  # done URLs are not fetched again
    records = await asyncio.to_thread(read_jsonl, tmp_path / "out.jsonl")
    assert sorted(r["url"] for r in records) == sorted(urls)  # no duplicate, none missing
    assert all(r["text"] == f"page {r['url'].rsplit('/', 1)[1]}" for r in records)


@pytest.mark.asyncio
async def test_retry_failed_fetches_only_the_failures_again(serve, tmp_path: Path) -> None:
    answers = {"n": 0}

    async def flaky(request: web.Request) -> web.StreamResponse:
        answers["n"] += 1
        if answers["n"] == 1:
            return web.Response(status=503, text="busy")
        return web.Response(text="fine")

    server = await serve({"/page/{n}": page, "/flaky": flaky})
    urls = [server.url(f"/page/{n}") for n in range(5)]
    await write_urls(tmp_path / "urls.txt", [*urls, server.url("/flaky")])
    args = ["urls.txt", "-o", "out.jsonl", "--journal", "j.db", "-q", "--robots", "ignore",
            "--retries", "0"]  # fmt: skip

    code, _, err = await spindle_fetch(*args, cwd=tmp_path)
    assert code == 1, err
    assert answers["n"] == 1
    code, _, err = await spindle_fetch(*args, cwd=tmp_path)
    assert code == 1, err
    assert answers["n"] == 1  # a recorded failure is not fetched again by default

    code, _, err = await spindle_fetch(*args, "--retry-failed", cwd=tmp_path)

    assert code == 0, err
    assert answers["n"] == 2
    assert server.count() == 5 + 2
    records = await asyncio.to_thread(read_jsonl, tmp_path / "out.jsonl")
    assert sorted(r["url"] for r in records) == sorted([*urls, server.url("/flaky")])


@pytest.mark.asyncio
async def test_csv_output_and_a_journal_of_another_url_list(serve, tmp_path: Path) -> None:
    server = await serve({"/page/{n}": page})
    urls = [server.url(f"/page/{n}") for n in range(10)]
    await write_urls(tmp_path / "urls.txt", urls)
    await write_urls(tmp_path / "other.txt", urls[:3])

    code, _, err = await spindle_fetch(
        "urls.txt", "-o", "out.csv", "--journal", "j.db", "-q", "--robots", "ignore", cwd=tmp_path
    )

    assert code == 0, err
    text = await asyncio.to_thread((tmp_path / "out.csv").read_text)
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert sorted(r["url"] for r in rows) == sorted(urls)
    assert {r["status"] for r in rows} == {"200"}
    assert json.loads(rows[0]["headers"])["content-type"].startswith("text/plain")

    code, _, err = await spindle_fetch(
        "other.txt", "-o", "out.csv", "--journal", "j.db", "-q", cwd=tmp_path
    )

    assert code == 2
    assert "journal" in err and "--force" in err


@pytest.mark.asyncio
async def test_journal_options_without_a_journal_are_a_usage_error(tmp_path: Path) -> None:
    await write_urls(tmp_path / "urls.txt", [refused_url()])
    code, _, err = await spindle_fetch(
        "urls.txt", "-o", "out.jsonl", "--retry-failed", cwd=tmp_path
    )
    assert code == 2
    assert "--retry-failed applies only to a journaled run: add --journal PATH" in err


@pytest.mark.asyncio
async def test_ctrl_c_drains_records_and_the_rerun_fetches_the_rest(serve, tmp_path: Path) -> None:
    gate = asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.Response(text=f"page {request.match_info['n']}")

    server = await serve({"/page/{n}": held})
    urls = [server.url(f"/page/{n}") for n in range(200)]
    await write_urls(tmp_path / "urls.txt", urls)
    args = ["urls.txt", "-o", "out.jsonl", "--journal", "j.db", "-q", "--robots", "ignore",
            "--workers", "1", "--concurrency", "4", "--per-host", "4", "--grace", "30"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spindle", "fetch", *args, cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        await server.meter.reached(4, within=60)  # four requests held at the server
        proc.send_signal(signal.SIGINT)
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert b"stopping: no new jobs" in line
        gate.set()  # the held requests finish within the grace period, and are recorded
        rest = await asyncio.wait_for(proc.stderr.read(), 30)
        assert await proc.wait() == 130, rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    first = server.count()
    assert 4 <= first < 200
    totals = await asyncio.to_thread(journal_totals, tmp_path / "j.db")
    assert totals["done"] == first  # every answer that came back is recorded

    code, _, err = await spindle_fetch(*args, cwd=tmp_path)

    assert code == 0, err
    assert server.count() == 200  # each URL fetched once over both runs
    records = await asyncio.to_thread(read_jsonl, tmp_path / "out.jsonl")
    assert sorted(r["url"] for r in records) == sorted(urls)
