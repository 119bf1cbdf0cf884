"""A run's cache: ``cache=`` on a stage or ``spindle.map`` gives every worker, in every
process, the same cache through ``spindle.cache()``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cachefns import async_run_cache_lookup, memoized_lookup, run_cache_lookup

import spindle
from spindle.cache import Cache

pytestmark = pytest.mark.timeout(120)

ITEMS = 10_000


def _items(tmp_path: Path) -> tuple[list[tuple[int, str]], Path]:
    log = tmp_path / "computed"
    log.touch()
    return [(x, str(log)) for x in range(ITEMS)], log


def _expected() -> list[str]:
    return [f"K{x % 100}" for x in range(ITEMS)]


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("cpu", {"start_method": "fork", "workers": 2}),
        ("cpu", {"start_method": "spawn", "workers": 2}),
        ("thread", {"workers": 4}),
    ],
)
def test_every_worker_computes_each_key_once_for_the_whole_run(
    tmp_path: Path, kind: str, options: dict[str, Any]
) -> None:
    items, log = _items(tmp_path)
    got = list(spindle.map(run_cache_lookup, items, kind=kind, cache="16MB", **options))
    assert got == _expected()
    computed = log.read_text().split()
    assert sorted(computed) == sorted(f"k{k}" for k in range(100))  # once each, not per worker


def test_an_io_stage_reaches_the_cache_too(tmp_path: Path) -> None:
    items, log = _items(tmp_path)
    got = list(spindle.map(async_run_cache_lookup, items, kind="io", cache="16MB"))
    assert got == _expected()
    assert len(log.read_text().split()) == 100


def test_memoize_in_a_job_goes_through_the_run_cache(tmp_path: Path) -> None:
    items, log = _items(tmp_path)
    got = list(spindle.map(memoized_lookup, items, kind="cpu", workers=2, cache="16MB"))
    assert got == _expected()
    assert len(log.read_text().split()) == 100


def test_a_cache_given_to_the_run_keeps_what_its_workers_wrote(tmp_path: Path) -> None:
    items, _ = _items(tmp_path)
    with Cache("16MB") as cache:
        stage = spindle.cpu(run_cache_lookup, workers=2, cache=cache)
        with spindle.Pipeline([stage]).run(items) as results:
            assert list(results) == _expected()
            row = results.snapshot()["caches"][0]  # type: ignore[typeddict-item]
        assert cache.get("k42") == "K42"
        assert row["path"] == cache.stats().path
        assert row["hits"] + row["misses"] >= ITEMS  # every job looked, in every process
        assert row["entries"] == 100


def test_a_cache_option_that_is_not_a_cache_or_a_size_is_refused() -> None:
    with pytest.raises(spindle.ConfigError, match=r"cache= takes a spindle\.Cache or a size"):
        spindle.cpu(run_cache_lookup, cache=[1, 2])  # type: ignore[arg-type]


def test_watching_a_cache_changes_none_of_its_figures() -> None:
    with Cache("16MB") as cache:
        cache.set("k", "v")
        before = cache.stats()
        assert 0 < cache.probe() < 1
        assert cache.stats() == before
