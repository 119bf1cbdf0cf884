"""The spindle command line, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[2] / "examples"

JOB = """
import asyncio

def double(line):
    return int(line) * 2

def explode(x):
    if x == 3:
        raise ValueError("three is bad")
    return x

async def adouble(line):
    await asyncio.sleep(0)
    return int(line) * 2

not_callable = 42
"""


def spindle(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spindle", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "myjobs.py").write_text(JOB)
    (tmp_path / "nums.txt").write_text("".join(f"{i}\n" for i in range(1, 1001)))
    return tmp_path


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("kind", ["cpu", "thread"])
def test_map_writes_input_and_result_in_order(work: Path, kind: str) -> None:
    out = spindle("map", "myjobs:double", "nums.txt", "-o", "out.jsonl", "--kind", kind, cwd=work)
    assert out.returncode == 0, out.stderr
    records = read_jsonl(work / "out.jsonl")
    assert records == [{"input": str(i), "result": 2 * i} for i in range(1, 1001)]
    assert "1,000 items, 0 failed" in out.stderr
    assert not (work / "out.jsonl.failures.jsonl").exists()


def test_map_io_kind_with_a_path_to_a_py_file_unordered(work: Path) -> None:
    out = spindle(
        "map",
        str(work / "myjobs.py") + ":adouble",
        "nums.txt",
        "-o",
        "o.jsonl",
        "--kind",
        "io",
        "--concurrency",
        "50",
        "--unordered",
        cwd=work,
    )
    assert out.returncode == 0, out.stderr
    records = read_jsonl(work / "o.jsonl")
    assert sorted(r["result"] for r in records) == [2 * i for i in range(1, 1001)]  # type: ignore[type-var]


def test_jsonl_malformed_line_fails_that_item_only(work: Path) -> None:
    (work / "in.jsonl").write_text('1\n{"broken\n3\n4\n')
    out = spindle(
        "map", "myjobs:explode", "in.jsonl", "--format", "jsonl", "-o", "o.jsonl", cwd=work
    )
    assert out.returncode == 1
    assert read_jsonl(work / "o.jsonl") == [{"input": 1, "result": 1}, {"input": 4, "result": 4}]
    failures = read_jsonl(work / "o.jsonl.failures.jsonl")
    assert [(f["input"], f["error"]) for f in failures] == [
        ('{"broken', "MalformedInput"),
        (3, "ValueError"),
    ]
    assert "line 2" in str(failures[0]["message"])
    assert "three is bad" in str(failures[1]["message"])
    assert "Traceback" in str(failures[1]["traceback"])
    assert failures[1]["attempts"] == 1
    assert "2 failed" in out.stderr


def test_stdin_input_and_stdout_output(work: Path) -> None:
    out = spindle(
        "map", "myjobs:double", "-", "-o", "-", "--kind", "thread", cwd=work, stdin="5\n6\n"
    )
    assert out.returncode == 0, out.stderr
    assert [json.loads(x) for x in out.stdout.splitlines()] == [
        {"input": "5", "result": 10},
        {"input": "6", "result": 12},
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchmodule:fn", "nums.txt"], "cannot import module 'nosuchmodule'"),
        (["myjobs:nofn", "nums.txt"], "has no function 'nofn'; it defines: adouble, double"),
        (["myjobs:not_callable", "nums.txt"], "not a function"),
        (["myjobs", "nums.txt"], "expected MODULE:FUNC"),
        (["myjobs:double", "missing.txt"], "cannot read input 'missing.txt'"),
        (["missing.py:fn", "nums.txt"], "no such file"),
        (["myjobs:adouble", "nums.txt", "--kind", "thread"], "use kind='io'"),
    ],
)
def test_mistakes_are_one_line_errors(work: Path, args: list[str], message: str) -> None:
    out = spindle("map", *args, "-o", "o.jsonl", cwd=work)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_unwritable_output_is_a_clear_error(work: Path) -> None:
    out = spindle("map", "myjobs:double", "nums.txt", "-o", "no/such/dir/o.jsonl", cwd=work)
    assert out.returncode == 2
    assert "cannot write output 'no/such/dir/o.jsonl'" in out.stderr


def test_the_bundled_example_runs(tmp_path: Path) -> None:
    out = spindle(
        "map",
        str(EXAMPLES / "jobs.py") + ":collatz",
        str(EXAMPLES / "numbers.txt"),
        "-o",
        str(tmp_path / "c.jsonl"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    first = json.loads((tmp_path / "c.jsonl").read_text().splitlines()[0])
    assert set(first["result"]) == {"steps", "peak"}
