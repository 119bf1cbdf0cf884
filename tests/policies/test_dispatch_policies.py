"""Dispatch policies on fake workers: parsing ``dispatch=``, and each policy's picks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from spindle import ConfigError
from spindle.policies.dispatch import (
    LEAST_LOADED,
    ByKey,
    Chooser,
    Dispatch,
    HashRing,
    LeastLoaded,
    RoundRobin,
    Weighted,
)


@dataclass
class Worker:
    index: int
    usable: bool = True
    pending: list[Any] = field(default_factory=list)


def pool(n: int) -> list[Worker]:
    return [Worker(i) for i in range(n)]


def picks(chooser: Chooser, workers: list[Worker], n: int, item: Any = "x") -> list[int]:
    """The slots of ``n`` picks of one-item batches."""
    out = []
    for _ in range(n):
        w = chooser.pick(workers, [item])
        assert w is not None
        out.append(w.index)
    return out


# -- parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected", "text"),
    [
        (None, Dispatch("least-loaded"), "least-loaded"),
        ("least-loaded", Dispatch("least-loaded"), "least-loaded"),
        (" round-robin ", Dispatch("round-robin"), "round-robin"),
        ("weighted:3,1", Dispatch("weighted", (3, 1)), "weighted:3,1"),
        ("weighted: 0.5, 2.0 ,1", Dispatch("weighted", (0.5, 2, 1)), "weighted:0.5,2,1"),
        ([3, 1], Dispatch("weighted", (3, 1)), "weighted:3,1"),
        ((1.5, 1.0), Dispatch("weighted", (1.5, 1)), "weighted:1.5,1"),
        ("key:user", Dispatch("key", field="user"), "key:user"),
        ("key: user id ", Dispatch("key", field="user id"), "key:user id"),
    ],
)
def test_every_form_parses_and_its_string_form_parses_back_the_same(
    value: Any, expected: Dispatch, text: str
) -> None:
    parsed = Dispatch.parse(value)

    assert parsed == expected
    assert str(parsed) == text
    assert Dispatch.parse(str(parsed)) == parsed
    assert Dispatch.parse(parsed) is parsed


def test_integral_weights_are_kept_as_ints_so_that_shares_add_up_exactly() -> None:
    weights = Dispatch.parse("weighted:3.0,1").weights

    assert weights == (3, 1) and all(type(w) is int for w in weights)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fastest", "'least-loaded', 'round-robin', 'weighted:W1,W2,...' or 'key:FIELD'"),
        ("least_loaded", "got 'least_loaded'"),
        ("weighted", "one weight per worker, e.g. 'weighted:3,1'"),
        ("weighted:", "weights are positive numbers"),
        ("weighted:3,0", "'0' is not"),
        ("weighted:3,-1", "'-1' is not"),
        ("weighted:3,a", "'a' is not"),
        ("weighted:3,,1", "'' is not"),
        ("weighted:nan", "'nan' is not"),
        ("weighted:inf,1", "'inf' is not"),
        ([], "gives no weight"),
        ([3, True], "True is not"),
        ([3, "1"], "'1' is not"),
        ("key", "the field of the items' key, e.g. 'key:user'"),
        ("key:", "names no field"),
        ("key:  ", "names no field"),
        (3, "got 3"),
    ],
)
def test_a_bad_dispatch_is_a_config_error_that_says_what_to_write(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match="dispatch") as caught:
        Dispatch.parse(value)
    assert message in str(caught.value)


def test_each_policy_makes_its_chooser_per_run() -> None:
    assert isinstance(LEAST_LOADED.chooser(4), LeastLoaded)
    assert isinstance(Dispatch.parse("round-robin").chooser(4), RoundRobin)
    assert isinstance(Dispatch.parse("weighted:1,2").chooser(2), Weighted)
    assert isinstance(Dispatch.parse("key:user").chooser(4), ByKey)
    assert isinstance(LEAST_LOADED.chooser(4, route=str), ByKey)  # route= is key affinity
    one, two = Dispatch.parse("round-robin").chooser(2), Dispatch.parse("round-robin").chooser(2)
    assert one is not two  # a run's turn is its own


def test_weighted_needs_one_weight_per_worker_slot() -> None:
    policy = Dispatch.parse("weighted:3,2,1")
    policy.check_workers(3)

    with pytest.raises(ConfigError, match="3 weights for 2 workers"):
        policy.check_workers(2)
    with pytest.raises(ConfigError, match="3 weights for 4 workers"):
        policy.chooser(4)


def test_route_goes_with_the_default_policy_only() -> None:
    with pytest.raises(ConfigError, match="route="):
        Dispatch.parse("round-robin").chooser(2, route=str)


# -- least loaded --------------------------------------------------------------------


def test_least_loaded_takes_the_usable_worker_with_the_fewest_pending() -> None:
    workers = [Worker(0, pending=[1, 2]), Worker(1, usable=False), Worker(2, pending=[1])]
    chooser = LEAST_LOADED.chooser(3)

    assert chooser.pick(workers, ["a", "b"]) is workers[2]
    assert chooser.pick([Worker(0, usable=False)], ["a"]) is None


# -- round robin ---------------------------------------------------------------------


def test_round_robin_takes_the_workers_in_turn_by_slot() -> None:
    workers = pool(4)
    workers[0].pending = [1, 2, 3]  # load is not looked at
    chooser = Dispatch.parse("round-robin").chooser(4)

    assert picks(chooser, workers, 10) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_round_robin_skips_a_worker_that_is_not_usable_and_comes_back_to_it() -> None:
    workers = pool(4)
    chooser = Dispatch.parse("round-robin").chooser(4)
    assert picks(chooser, workers, 2) == [0, 1]

    workers[2].usable = False
    assert picks(chooser, workers, 5) == [3, 0, 1, 3, 0]
    workers[2].usable = True
    assert picks(chooser, workers, 5) == [1, 2, 3, 0, 1]


def test_round_robin_follows_slots_not_the_order_of_the_list() -> None:
    # A replacement joins the end of the executor's list, in the slot of the worker
    # it replaces: the turn still goes by slot.
    workers = [Worker(0), Worker(2), Worker(3), Worker(1)]
    chooser = Dispatch.parse("round-robin").chooser(4)

    assert picks(chooser, workers, 8) == [0, 1, 2, 3, 0, 1, 2, 3]


def test_round_robin_with_no_usable_worker_picks_none_and_keeps_its_turn() -> None:
    workers = pool(3)
    chooser = Dispatch.parse("round-robin").chooser(3)
    assert picks(chooser, workers, 2) == [0, 1]

    for w in workers:
        w.usable = False
    assert chooser.pick(workers, ["x"]) is None
    for w in workers:
        w.usable = True
    assert picks(chooser, workers, 3) == [2, 0, 1]


def test_round_robin_gives_equal_shares() -> None:
    counts = Counter(picks(Dispatch.parse("round-robin").chooser(5), pool(5), 500))

    assert counts == dict.fromkeys(range(5), 100)


# -- weighted ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "n", "expected"),
    [
        ("3,1", 400, [300, 100]),
        ("1,2,3,4", 1000, [100, 200, 300, 400]),
        ("1,1,1", 300, [100, 100, 100]),
        ("0.5,1.5", 400, [100, 300]),
        ("2.5,1,1", 900, [500, 200, 200]),
    ],
)
def test_weighted_shares_are_exact_over_whole_cycles(
    weights: str, n: int, expected: list[int]
) -> None:
    policy = Dispatch.parse(f"weighted:{weights}")
    counts = Counter(picks(policy.chooser(len(expected)), pool(len(expected)), n))

    assert [counts[i] for i in range(len(expected))] == expected


def test_weighted_picks_are_spread_not_sent_in_bursts() -> None:
    chooser = Dispatch.parse("weighted:5,1,1").chooser(3)

    assert picks(chooser, pool(3), 14) == [0, 0, 1, 0, 2, 0, 0] * 2  # nginx's example


def test_weighted_ignores_load() -> None:
    workers = pool(2)
    workers[0].pending = list(range(10))
    chooser = Dispatch.parse("weighted:3,1").chooser(2)

    assert picks(chooser, workers, 8) == [0, 0, 1, 0] * 2


def test_weighted_skips_a_worker_that_is_not_usable_and_the_others_share_its_turns() -> None:
    workers = pool(3)
    chooser = Dispatch.parse("weighted:1,2,3").chooser(3)
    assert Counter(picks(chooser, workers, 60)) == {0: 10, 1: 20, 2: 30}

    workers[1].usable = False
    shares = Counter(picks(chooser, workers, 400))
    assert 1 not in shares
    assert shares == {0: 100, 2: 300}  # 1:3, as their weights

    workers[1].usable = True
    shares = Counter(picks(chooser, workers, 600))
    assert all(abs(shares[i] - 100 * (i + 1)) <= 3 for i in range(3)), shares


def test_weighted_with_no_usable_worker_picks_none() -> None:
    workers = pool(2)
    chooser = Dispatch.parse("weighted:3,1").chooser(2)
    for w in workers:
        w.usable = False

    assert chooser.pick(workers, ["x"]) is None
    for w in workers:
        w.usable = True
    assert picks(chooser, workers, 4) == [0, 0, 1, 0]  # no turn was spent meanwhile


# -- key -----------------------------------------------------------------------------


def test_key_sends_every_item_of_a_key_to_the_worker_of_its_key_on_the_ring() -> None:
    workers = pool(4)
    chooser = Dispatch.parse("key:user").chooser(4)
    ring = HashRing(range(4))

    for user in ("ann", "bob", "cy", "dee", "eve"):
        slots = {
            w.index
            for w in (chooser.pick(workers, [{"user": user, "n": n}]) for n in range(20))
            if w
        }
        assert slots == {ring.order(user)[0]}


def test_key_moves_a_key_to_the_next_on_the_ring_while_its_worker_is_down() -> None:
    workers = pool(4)
    chooser = Dispatch.parse("key:user").chooser(4)
    order = HashRing(range(4)).order("ann")
    item = {"user": "ann"}

    workers[order[0]].usable = False
    assert set(picks(chooser, workers, 10, item)) == {order[1]}
    workers[order[1]].usable = False
    assert set(picks(chooser, workers, 10, item)) == {order[2]}
    workers[order[0]].usable = True
    assert set(picks(chooser, workers, 10, item)) == {order[0]}


def test_key_sends_items_without_the_field_and_batches_of_several_by_load() -> None:
    workers = [Worker(0, pending=[1]), Worker(1), Worker(2, pending=[1, 2])]
    chooser = Dispatch.parse("key:user").chooser(3)

    for item in ({"name": "ann"}, "ann", ["user"], 7, None):
        assert chooser.pick(workers, [item]) is workers[1]
    assert chooser.pick(workers, [{"user": "a"}, {"user": "b"}]) is workers[1]


def test_key_values_of_any_kind_are_keys() -> None:
    workers = pool(3)
    chooser = Dispatch.parse("key:k").chooser(3)
    ring = HashRing(range(3))

    for value in (42, None, ("a", "b"), ["un", "hashable"]):
        got = {w.index for w in (chooser.pick(workers, [{"k": value}]) for _ in range(5)) if w}
        assert got == {next(ring.walk(value))}


def test_a_route_that_fails_sends_the_item_by_load() -> None:
    def route(item: Any) -> Any:
        return item["host"]

    workers = [Worker(0, pending=[1]), Worker(1)]
    chooser = LEAST_LOADED.chooser(2, route=route)

    assert chooser.pick(workers, ["no host"]) is workers[1]
    owner = HashRing(range(2)).order("example.org")[0]
    assert chooser.pick(workers, [{"host": "example.org"}]) is workers[owner]


def test_a_route_key_with_a_share_spreads_over_the_usable_workers_in_ring_order() -> None:
    workers = pool(5)
    workers[2].usable = False
    chooser = LEAST_LOADED.chooser(5, route=lambda item: item)
    order = [s for s in HashRing(range(5)).order("busy") if s != 2]

    got = [w.index for w in (chooser.pick(workers, [("busy", i)]) for i in range(8)) if w]

    assert got == order + order
