"""``spindle fetch`` run as a user runs it, against local servers on the test's loop."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ._http import Server, status
from ._leftovers import no_stray_threads_or_children  # noqa: F401 - a fixture

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("no_stray_threads_or_children")]

BLOB = bytes(range(256)) * 100

PARSER = """
import os

def words(response):
    return {"words": response.text().split(), "pid": os.getpid()}

def lines(response):
    yield from response.text().split()

async def not_plain(response):
    return 1

def opaque(response):
    return object() if response.url.endswith("/1") else {"ok": True}
"""


async def spindle_fetch(*args: str, cwd: Path, stdin: bytes = b"") -> tuple[int, str, str]:
    """Run ``python -m spindle fetch ARGS`` while this loop keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "spindle",
        "fetch",
        *args,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing"


async def page(request: web.Request) -> web.StreamResponse:
    return web.Response(text=f"page {request.match_info['n']}")


async def blob(request: web.Request) -> web.StreamResponse:
    return web.Response(body=BLOB, content_type="application/octet-stream")


async def hosts(serve, count: int = 2) -> list[Server]:
    return [
        await serve({"/page/{n}": page, "/blob": blob, "/gone": status(404)}) for _ in range(count)
    ]


@pytest.mark.asyncio
async def test_records_and_failures(serve, tmp_path: Path) -> None:
    a, b = await hosts(serve)
    good = [s.url(f"/page/{n}") for n in range(15) for s in (a, b)]
    refused = refused_url()
    lines = ["# a comment", "", *good, "   ", a.url("/gone"), b.url("/blob"), "not a url", refused]
    await asyncio.to_thread((tmp_path / "urls.txt").write_text, "\n".join(lines) + "\n")

    code, _, err = await spindle_fetch(
        "urls.txt", "-o", "out.jsonl", "--workers", "2", "--retries", "0", "-q", cwd=tmp_path
    )

    assert code == 1, err
    records = await asyncio.to_thread(read_jsonl, tmp_path / "out.jsonl")
    failures = await asyncio.to_thread(read_jsonl, tmp_path / "out.jsonl.failures.jsonl")
    assert len(records) + len(failures) == len(good) + 4  # every URL once, comments skipped
    by_url = {r["url"]: r for r in records}
    assert set(by_url) == {*good, a.url("/gone"), b.url("/blob")}
    for url in good:
        record = by_url[url]
        assert record["status"] == 200 and record["final_url"] == url
        assert record["text"] == f"page {url.rsplit('/', 1)[1]}"
        assert record["attempts"] == 1 and record["elapsed"] > 0
        assert record["headers"]["content-type"].startswith("text/plain")
    assert by_url[a.url("/gone")]["status"] == 404
    blob_record = by_url[b.url("/blob")]
    assert "text" not in blob_record
    assert base64.b64decode(blob_record["body_base64"]) == BLOB
    reasons = {f["input"]: (f["error"], f["message"]) for f in failures}
    assert reasons == {
        "not a url": (
            "FetchFailed",
            "invalid URL: 'not a url' (no scheme; only http and https are fetched)",
        ),
        refused: ("FetchFailed", "cannot connect: connection refused (after 1 attempts)"),
    }
    assert "spindle: 34 items, 2 failed" in err


@pytest.mark.asyncio
async def test_all_fetched_is_exit_status_0_and_stdin_to_stdout(serve, tmp_path: Path) -> None:
    (server,) = await hosts(serve, 1)
    urls = [server.url(f"/page/{n}") for n in range(5)]
    stdin = ("\n".join(urls) + "\n").encode()

    code, out, err = await spindle_fetch("-", "-o", "-", "-q", cwd=tmp_path, stdin=stdin)

    assert code == 0, err
    assert sorted(json.loads(line)["url"] for line in out.splitlines()) == sorted(urls)
    assert not (tmp_path / "spindle.failures.jsonl").exists()


@pytest.mark.asyncio
@pytest.mark.parametrize("parse_in", ["fetch", "pool"])
async def test_parse_runs_in_worker_processes(serve, tmp_path: Path, parse_in: str) -> None:
    a, b = await hosts(serve)
    urls = [s.url(f"/page/{n}") for n in range(6) for s in (a, b)]
    await asyncio.to_thread((tmp_path / "urls.txt").write_text, "\n".join([*urls, "bad"]) + "\n")
    await asyncio.to_thread((tmp_path / "myparser.py").write_text, PARSER)

    code, _, err = await spindle_fetch(
        "urls.txt", "-o", "out.jsonl", "--parse", "myparser:words", "--workers", "2", "-q",
        "--parse-in", parse_in, cwd=tmp_path,
    )  # fmt: skip

    assert code == 1, err
    records = await asyncio.to_thread(read_jsonl, tmp_path / "out.jsonl")
    assert sorted(r["url"] for r in records) == sorted(urls)
    pids = set()
    for record in records:
        assert set(record) == {"url", "final_url", "status", "headers", "elapsed", "attempts",
                               "result"}  # fmt: skip
        assert record["result"]["words"] == ["page", record["url"].rsplit("/", 1)[1]]
        pids.add(record["result"]["pid"])
    assert len(pids) <= 2  # two worker processes (fetch or parse), not the command
    failures = await asyncio.to_thread(read_jsonl, tmp_path / "out.jsonl.failures.jsonl")
    assert [(f["input"], f["error"]) for f in failures] == [("bad", "FetchFailed")]

    # A generator's values stay together: still one line per URL.
    code, _, err = await spindle_fetch(
        "urls.txt", "-o", "gen.jsonl", "--parse", "myparser.py:lines", "-q",
        "--parse-in", parse_in, cwd=tmp_path,
    )  # fmt: skip
    assert code == 1, err
    records = await asyncio.to_thread(read_jsonl, tmp_path / "gen.jsonl")
    assert len(records) == len(urls)
    assert all(r["result"] == ["page", r["url"].rsplit("/", 1)[1]] for r in records)

    # A result that cannot be written as JSON fails its URL alone, saying so.
    code, _, err = await spindle_fetch(
        "urls.txt", "-o", "opaque.jsonl", "--parse", "myparser.py:opaque", "-q",
        "--parse-in", parse_in, cwd=tmp_path,
    )  # fmt: skip
    assert code == 1, err
    records = await asyncio.to_thread(read_jsonl, tmp_path / "opaque.jsonl")
    assert sorted(r["url"] for r in records) == sorted(u for u in urls if not u.endswith("/1"))
    assert all(r["result"] == {"ok": True} for r in records)
    failures = await asyncio.to_thread(read_jsonl, tmp_path / "opaque.jsonl.failures.jsonl")
    unwritable = [f for f in failures if f["error"] == "Unserializable"]
    assert sorted(f["input"] for f in unwritable) == sorted(u for u in urls if u.endswith("/1"))
    assert all("the parse function must return" in f["message"] for f in unwritable)


@pytest.mark.asyncio
async def test_save_dir_files_match_their_sha256(serve, tmp_path: Path) -> None:
    a, b = await hosts(serve)
    urls = [a.url("/blob"), b.url("/blob"), a.url("/page/7")]
    await asyncio.to_thread((tmp_path / "urls.txt").write_text, "\n".join(urls) + "\n")

    code, _, err = await spindle_fetch(
        "urls.txt", "-o", "out.jsonl", "--save-dir", "bodies", "-q", cwd=tmp_path
    )

    assert code == 0, err
    records = await asyncio.to_thread(read_jsonl, tmp_path / "out.jsonl")
    assert sorted(r["url"] for r in records) == sorted(urls)
    for record in records:
        assert "text" not in record and "body_base64" not in record
        data = await asyncio.to_thread((tmp_path / record["path"]).read_bytes)
        assert record["size"] == len(data)
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert Path(record["path"]).parent == Path("bodies")
        expected = b"page 7" if record["url"].endswith("/page/7") else BLOB
        assert data == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--parse", "nosuchmodule:f"], "cannot import module 'nosuchmodule'"),
        (["--parse", "myparser:nope"], "module 'myparser' has no function 'nope'"),
        (["--parse", "myparser:not_plain"], "is 'async def'"),
        (["--parse-in", "pool"], "--parse-in pool needs --parse MODULE:FUNC"),
        (["--max-bytes", "lots"], "cannot read memory size 'lots'"),
        (["--per-host", "0"], "Invalid value for '--per-host'"),
        (["--robots", "maybe"], "Invalid value for '--robots'"),
    ],
)
def test_usage_problems_are_exit_status_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "myparser.py").write_text(PARSER)
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/\n")
    out = subprocess.run(
        [sys.executable, "-m", "spindle", "fetch", "urls.txt", "-o", "out.jsonl", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_input_is_exit_status_2(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "spindle", "fetch", "missing.txt", "-o", "out.jsonl"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "cannot read input 'missing.txt'" in out.stderr


@pytest.mark.asyncio
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_first_signal_lets_requests_in_flight_finish(
    serve, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    gate = asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.Response(text="late")

    server = await serve({"/slow/{n}": held})
    urls = [server.url(f"/slow/{n}") for n in range(200)]
    await asyncio.to_thread((tmp_path / "urls.txt").write_text, "\n".join(urls) + "\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spindle", "fetch", "urls.txt", "-o", "out.jsonl",
        "--workers", "1", "--concurrency", "4", "--per-host", "4", "--grace", "30", "-q",
        "--robots", "ignore",
        cwd=tmp_path, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        await server.meter.reached(4, within=60)  # four requests held at the server
        assert server.meter.in_flight == 4
        proc.send_signal(sig)
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert b"stopping: no new jobs" in line
        gate.set()  # the held requests may now finish within the grace period
        rest = await asyncio.wait_for(proc.stderr.read(), 30)
        assert await proc.wait() == code, rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    records = await asyncio.to_thread(read_jsonl, tmp_path / "out.jsonl")
    assert len(records) == server.count() >= 4
    assert all(r["text"] == "late" for r in records)
    assert b"interrupted after" in rest
    assert not (tmp_path / "out.jsonl.failures.jsonl").exists()
