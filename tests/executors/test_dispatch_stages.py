"""A cpu stage's ``dispatch=`` on real worker processes, and its option's rules.

Each job learns which worker runs it from ``spindle.worker_state()``: the stage's
``init`` claims a role, 0 to N-1, by creating the first free ``role-<i>`` file in the
test's marks directory (``O_EXCL``: exactly one worker gets each role). A worker
started after the first N (a replacement) finds no role left and fails to start, so
a slot whose worker was killed stays empty for the rest of the run.

The assertions count items per worker: none waits on the clock. The jobs that sleep
do so to be the work, so that a worker's share follows from its speed.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import spindle
from spindle import ConfigError, Failure
from spindle.policies.dispatch import Dispatch, HashRing

#: Seconds an item costs a fast worker, and the slow one.
FAST, SLOW = 0.010, 0.050


def claim_role(roles: int) -> int:
    """``init``: the first role of ``roles`` no other worker of the run has taken."""
    marks = os.environ["SPINDLE_TEST_MARKS"]
    for i in itertools.count():
        try:
            fd = os.open(os.path.join(marks, f"role-{i}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        if i >= roles:
            raise RuntimeError("every role is taken: this test starts no replacement worker")
        return i


def role_of(_: Any) -> int:
    role: int = spindle.worker_state()
    return role


def slow_if_role_0(_: Any) -> int:
    role: int = spindle.worker_state()
    time.sleep(SLOW if role == 0 else FAST)
    return role


def briefly(_: Any) -> int:
    time.sleep(0.002)
    role: int = spindle.worker_state()
    return role


def user_and_role(item: dict[str, Any]) -> tuple[str, int]:
    if item.get("kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    role: int = spindle.worker_state()
    return item["user"], role


# -- on worker processes -------------------------------------------------------------


@pytest.mark.timeout(30)
def test_least_loaded_gives_a_five_times_slower_worker_a_fifth_of_the_items(marks: Path) -> None:
    n = 600
    roles = list(
        spindle.map(
            slow_if_role_0,
            range(n),
            workers=4,
            batch_size=1,
            ordered=False,  # in order, the slow worker's results would hold the others'
            init=functools.partial(claim_role, 4),
        )
    )

    counts = Counter(roles)
    slow, fast = counts[0], [counts[r] for r in (1, 2, 3)]
    assert sum(fast) + slow == n
    # Its fair share is 1/16 (it does a fifth of a fast worker's items); taking at most
    # 1/13 it finishes its items along with the others', not long after them.
    assert 0 < slow <= n / 13, counts
    assert slow <= max(fast) / 5 * 1.25 + 2, counts
    # Each worker was kept busy for about as long as the others, in units of a fast
    # item's cost: the pool ran at >= 90% of what the four workers can do together.
    busy = [slow * SLOW / FAST, *fast]
    capacity_used = sum(busy) / (len(busy) * max(busy))
    assert capacity_used >= 0.9, (counts, capacity_used)
    assert max(fast) - min(fast) <= 0.1 * max(fast), counts  # the fast ones alike


@pytest.mark.timeout(30)
@pytest.mark.parametrize("weights", ["3,1", "1,2,3,4"])
def test_weighted_dispatch_gives_each_worker_its_weights_share(marks: Path, weights: str) -> None:
    shares = [int(w) for w in weights.split(",")]
    n = 400
    roles = list(
        spindle.map(
            briefly,
            range(n),
            workers=len(shares),
            dispatch=f"weighted:{weights}",
            batch_size=1,
            init=functools.partial(claim_role, len(shares)),
        )
    )

    counts = sorted(Counter(roles).values())
    expected = sorted(n * s / sum(shares) for s in shares)
    # Roles are taken in the order workers start, not by slot: compare sorted shares.
    assert len(counts) == len(shares)
    assert all(
        abs(got - want) <= 0.05 * want for got, want in zip(counts, expected, strict=True)
    ), (
        counts,
        expected,
    )


@pytest.mark.timeout(30)
def test_round_robin_gives_every_worker_the_same_share(marks: Path) -> None:
    roles = list(
        spindle.map(
            role_of,
            range(200),
            workers=4,
            dispatch="round-robin",
            batch_size=1,
            init=functools.partial(claim_role, 4),
        )
    )

    assert Counter(roles) == dict.fromkeys(range(4), 50)


@pytest.mark.timeout(30)
def test_key_dispatch_keeps_a_key_on_one_worker_and_moves_it_to_one_other_when_it_dies(
    marks: Path,
) -> None:
    users = ["ann", "bob", "cy", "dee", "eve", "fay"]
    before = [{"user": users[i % len(users)], "n": i} for i in range(60)]
    after = [{"user": users[i % len(users)], "n": i} for i in range(60, 120)]
    items = [*before, {"user": "ann", "kill": True}, *after]

    results = list(
        spindle.map(
            user_and_role,
            items,
            workers=3,
            dispatch="key:user",
            on_error="yield",
            init=functools.partial(claim_role, 3),
        )
    )

    killed = results[len(before)]
    assert isinstance(killed, Failure) and killed.error == "WorkerCrashed"
    first: dict[str, set[int]] = {}
    then: dict[str, set[int]] = {}
    for got, into in ((results[: len(before)], first), (results[len(before) + 1 :], then)):
        for user, role in got:
            into.setdefault(user, set()).add(role)
    assert all(len(roles) == 1 for roles in first.values()), first
    assert all(len(roles) == 1 for roles in then.values()), then
    assert len(set().union(*first.values())) > 1  # the keys are spread
    (dead,) = first["ann"]  # the kill went to ann's worker
    for user in users:
        if first[user] == {dead}:
            assert then[user] != {dead}  # to the next worker on the ring, the same for all
        else:
            assert then[user] == first[user]  # a key whose worker lives stays put


@pytest.mark.timeout(30)
def test_items_without_the_key_go_by_load(marks: Path) -> None:
    items: list[Any] = [{"other": i} if i % 2 else f"text {i}" for i in range(80)]

    roles = list(
        spindle.map(
            role_of,
            items,
            workers=2,
            dispatch="key:user",
            batch_size=1,
            init=functools.partial(claim_role, 2),
        )
    )

    assert set(roles) == {0, 1}


# -- the option's rules --------------------------------------------------------------


def test_dispatch_is_kept_on_the_stage_and_reaches_the_executor() -> None:
    stage = spindle.cpu(role_of, workers=2, dispatch="weighted:3, 1")

    assert stage.dispatch == Dispatch("weighted", (3, 1))
    assert stage.work_spec().dispatch == stage.dispatch
    assert spindle.cpu(role_of, workers=2).dispatch == Dispatch("least-loaded")
    assert spindle.cpu(role_of, dispatch=[1, 2]).dispatch == Dispatch("weighted", (1, 2))


def test_weighted_dispatch_has_one_weight_per_worker() -> None:
    with pytest.raises(ConfigError, match="3 weights for 2 workers"):
        spindle.cpu(role_of, workers=2, dispatch="weighted:1,2,3")
    # Without workers=, one worker per weight.
    assert spindle.cpu(role_of, dispatch="weighted:1,2,3").workers == 3


def test_key_dispatch_sends_one_item_per_batch_unless_told_otherwise() -> None:
    assert spindle.cpu(role_of, workers=2, dispatch="key:user").batch_size == 1
    assert spindle.cpu(role_of, workers=2, dispatch="key:user", batch_size=8).batch_size == 8
    assert spindle.cpu(role_of, workers=2, dispatch="round-robin").batch_size is None


@pytest.mark.parametrize("kind", ["thread", "io"])
def test_dispatch_applies_to_cpu_stages_only(kind: str) -> None:
    async def job(x: Any) -> Any:
        return x

    fn = job if kind == "io" else role_of
    with pytest.raises(ConfigError, match="kind='cpu' only"):
        spindle.map(fn, [1], kind=kind, dispatch="round-robin")


@pytest.mark.parametrize("dispatch", ["key:user", "round-robin", "weighted:1,1"])
def test_route_and_dispatch_are_one_or_the_other(dispatch: str) -> None:
    with pytest.raises(ConfigError, match="route= and dispatch="):
        spindle.cpu(role_of, workers=2, route=str, dispatch=dispatch)
    assert spindle.cpu(role_of, workers=2, route=str, dispatch="least-loaded").route is str


def test_a_bad_dispatch_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'least-loaded', 'round-robin'"):
        spindle.cpu(role_of, dispatch="random")
    with pytest.raises(ConfigError, match="names no field"):
        spindle.map(role_of, [1], dispatch="key:")


# -- the command line ----------------------------------------------------------------

JOB = """
import os

def who(item):
    return [item["user"], os.getpid()]
"""


def spindle_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spindle", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(60)
def test_map_command_takes_dispatch(tmp_path: Path) -> None:
    (tmp_path / "myjobs.py").write_text(JOB)
    users = ["ann", "bob", "cy", "dee"]
    lines = [json.dumps({"user": users[i % 4], "n": i}) for i in range(40)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")

    out = spindle_cli(
        "map", "myjobs:who", "in.jsonl", "--format", "jsonl", "-o", "o.jsonl",
        "--workers", "2", "--dispatch", "key:user", cwd=tmp_path,
    )  # fmt: skip

    assert out.returncode == 0, out.stderr
    records = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    pids: dict[str, set[int]] = {}
    for r in records:
        user, pid = r["result"]
        pids.setdefault(user, set()).add(pid)
    assert len(records) == 40 and all(len(p) == 1 for p in pids.values()), pids
    ring = HashRing(range(2))
    assert len(set().union(*pids.values())) == len({ring.order(u)[0] for u in users})


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dispatch", "fastest"], "dispatch must be 'least-loaded', 'round-robin'"),
        (["--dispatch", "weighted:1,2,3", "--workers", "2"], "3 weights for 2 workers"),
        (["--dispatch", "key:user"], "add --format jsonl"),
        (["--dispatch", "round-robin", "--kind", "thread"], "applies to kind='cpu' only"),
    ],
)
def test_map_command_dispatch_mistakes_are_one_line_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "myjobs.py").write_text(JOB)
    (tmp_path / "in.txt").write_text("a\n")

    out = spindle_cli("map", "myjobs:who", "in.txt", "-o", "o.jsonl", *args, cwd=tmp_path)

    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
