"""choose: the worker a batch goes to, by key affinity or by load."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spindle.policies.dispatch import HashRing, choose


@dataclass
class Worker:
    index: int
    usable: bool = True
    pending: list[Any] = field(default_factory=list)


def bad_key(item: Any) -> Any:
    raise KeyError(item)


def test_without_affinity_the_least_loaded_usable_worker_takes_the_batch() -> None:
    workers = [Worker(0, pending=[1, 2]), Worker(1, usable=False), Worker(2, pending=[1])]
    assert choose(workers, ["a", "b"], None, None) is workers[2]
    assert choose([Worker(0, usable=False)], ["a"], None, None) is None


def test_one_item_goes_to_the_worker_of_its_key_and_the_next_when_that_one_is_down() -> None:
    ring = HashRing(range(4))
    workers = [Worker(i, pending=[0] * i) for i in range(4)]
    owner = choose(workers, ["example.org"], ring, str)
    assert owner is not None and owner.index == ring.order("example.org")[0]
    owner.usable = False
    second = choose(workers, ["example.org"], ring, str)
    assert second is not None and second.index == ring.order("example.org")[1]


def test_a_key_that_cannot_be_computed_or_a_batch_of_several_goes_by_load() -> None:
    ring = HashRing(range(2))
    workers = [Worker(0, pending=[1]), Worker(1)]
    assert choose(workers, ["x"], ring, bad_key) is workers[1]
    assert choose(workers, ["x", "y"], ring, str) is workers[1]
