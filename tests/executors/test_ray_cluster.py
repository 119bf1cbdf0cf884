"""The Ray backend on a simulated cluster: a head and two worker nodes on this machine
(``ray.cluster_utils.Cluster``), started once for the module.

The head has no CPU, so every actor runs on a worker node, two per node: batches spread
over the nodes, and removing a node takes half the actors with it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import spindle

from . import _ray_jobs
from ._ray_support import Acting, empty, leak_check, needs_ray, ray_daemons, spindle_actors

pytestmark = [needs_ray, pytest.mark.slow, pytest.mark.timeout(180)]

NODES = 2
CPUS_PER_NODE = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # the local Ray of another module: one Ray per process
    made = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False},
    )
    try:
        for _ in range(NODES):
            made.add_node(num_cpus=CPUS_PER_NODE)
        made.wait_for_nodes()
        ray.init(address=made.address, logging_level=logging.WARNING)
        made.test_daemons = ray_daemons()
        yield made
    finally:
        ray.shutdown()
        made.shutdown()


@pytest.fixture(autouse=True)
def no_leaks(cluster: Any) -> Iterator[None]:
    with leak_check(cluster.test_daemons):
        yield


@pytest.fixture
def marks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory the jobs and the test share (every node is on this machine)."""
    return empty(tmp_path_factory.mktemp("marks", numbered=True))


def _worker_nodes(cluster: Any) -> dict[str, Any]:
    return {node.node_id: node for node in cluster.worker_nodes}


def test_batches_spread_over_the_nodes_and_the_snapshot_shows_them(cluster: Any) -> None:
    pipeline = spindle.Pipeline([spindle.cpu(_ray_jobs.node_of, backend="ray", batch_size=4)])
    results = pipeline.run(range(400))
    first = next(results)
    rows = results.snapshot()["workers"]
    got = [first, *results]
    assert [x for x, _ in got] == list(range(400))
    per_node = Counter(node for _, node in got)
    assert set(per_node) == set(_worker_nodes(cluster))  # both nodes, not the head
    assert min(per_node.values()) > 40
    # One actor per CPU of the cluster; each row names its node (and its stage by it).
    assert len(rows) == NODES * CPUS_PER_NODE
    assert Counter(r["node"] for r in rows) == dict.fromkeys(  # type: ignore[typeddict-item]
        _worker_nodes(cluster), CPUS_PER_NODE
    )
    assert all(r["stage"] == f"node_of @ {r['node'][:8]}" for r in rows)  # type: ignore[typeddict-item]


def test_a_node_removed_mid_run_costs_only_its_batches(cluster: Any, marks: Path) -> None:
    removed: list[str] = []

    def remove(pid: int, node: str) -> None:
        cluster.remove_node(_worker_nodes(cluster)[node])
        removed.append(node)

    acting = Acting(marks, remove)
    items = [(str(marks), x, 123) for x in range(600)]
    try:
        results = spindle.map(
            _ray_jobs.double_but_hold, items, backend="ray", batch_size=4, ordered=False
        )
        got = list(results)
        acting.join()
        assert Counter(got) == Counter(2 * x for x in range(600))  # every item once
        [stats] = results.stats()
        assert (stats.done, stats.failed) == (600, 0)
        # Both actors of the lost node were replaced (their replacements wait for room
        # that never comes: the other node is full; the run ended without them).
        assert stats.restarts == CPUS_PER_NODE
        assert spindle_actors() == []
    finally:
        if removed:  # the next test gets two nodes again
            cluster.add_node(num_cpus=CPUS_PER_NODE)
            cluster.wait_for_nodes()


def test_io_stages_run_on_async_actors_on_every_node(cluster: Any) -> None:
    async def where(x: int) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())

    got = list(spindle.map(where, range(200), kind="io", backend="ray", concurrency=5))
    assert set(got) == set(_worker_nodes(cluster))
