"""Bounded memory: the pipeline holds a fixed number of items whatever the input size."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import workfns as jobs
from _support import Counted

import spindle


@pytest.mark.parametrize(
    "stage",
    [
        spindle.cpu(jobs.square, workers=2),
        spindle.thread(jobs.square, workers=4),
        spindle.io(jobs.async_square, concurrency=50),
    ],
    ids=["cpu", "thread", "io"],
)
@pytest.mark.parametrize("ordered", [True, False])
def test_items_drawn_minus_consumed_never_exceeds_the_bound(
    stage: spindle.Stage, ordered: bool
) -> None:
    source = Counted(300_000)
    pipeline = spindle.Pipeline([stage], ordered=ordered)
    bound = pipeline.bound()
    assert bound < source.n // 2  # the bound is far below the input size
    consumed = 0
    worst = 0
    for _ in pipeline.run(source):
        consumed += 1
        worst = max(worst, source.drawn - consumed)
    assert consumed == source.n
    assert worst <= bound, (worst, bound)


def test_a_slow_consumer_makes_the_source_wait() -> None:
    source = Counted(10**9)  # would never finish if read eagerly
    pipeline = spindle.Pipeline([spindle.thread(jobs.square, workers=2)])
    results = pipeline.run(source)
    for i, _ in enumerate(results):
        if i == 1000:
            break
    results.close()
    assert source.drawn <= 1000 + pipeline.bound()


@pytest.mark.parametrize("ordered", [True, False])
def test_a_journaled_run_holds_at_most_the_bound_plus_one_claimed_chunk(
    tmp_path: Path, ordered: bool
) -> None:
    """A journal claims a chunk of the input at a time (up to MAX_CHUNK items) before the
    pipeline takes it: that, and no more, comes on top of the pipeline's bound."""
    from spindle.journal._claims import MAX_CHUNK

    source = Counted(100_000)
    pipeline = spindle.Pipeline([spindle.thread(jobs.square, workers=4)], ordered=ordered)
    limit = pipeline.bound() + MAX_CHUNK
    assert limit < source.n // 2
    consumed = worst = 0
    for _ in pipeline.run(source, journal=tmp_path / "j.db"):
        consumed += 1
        worst = max(worst, source.drawn - consumed)
    assert consumed == source.n
    assert worst <= limit, (worst, limit)


RSS_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    sys.path.insert(0, {tests!r})
    import spindle, workfns
    n = 0
    for _ in spindle.map(workfns.square, (i for i in range(5_000_000)), kind="cpu"):
        n += 1
    assert n == 5_000_000, n
    # VmHWM is this address space's peak. ru_maxrss is not: on Linux, exec folds the
    # parent's peak into it, so a child of a big test runner would report the runner.
    try:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(kb // 1024)
    """
)


@pytest.mark.timeout(180)
def test_five_million_items_stay_under_a_fixed_memory_ceiling(tmp_path: Path) -> None:
    script = tmp_path / "rss.py"
    script.write_text(RSS_SCRIPT.format(tests=str(Path(__file__).parents[1])))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr
    peak_mb = int(out.stdout.strip())
    # Holding this input would take about 460 MB (5M one-item chunks of small ints);
    # a bounded run peaks near 30 MB.
    assert peak_mb < 150, f"parent peak RSS {peak_mb} MB"
