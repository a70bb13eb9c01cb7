"""Where a mesh's shards and hosts go on a Ray cluster: round robin over its nodes, the driver's own last.

The ledger writer and the coordinator stay on the driver's node (the run directory is on its disk);
the budget shards and the agent hosts are dealt out one per node in turn, starting with the
other nodes, so a cluster of a head and two workers with four shards runs them on worker 1,
worker 2, the head, worker 1. Each gets a *soft* node affinity: if its node is gone (when it is
created, or when Ray restarts it after that node died) Ray places it on another node. Ray's own
``SPREAD`` strategy balances only roughly (it can leave a node with none of six actors), which
would leave a cluster's capacity, and a test's expectations, to chance.

Ray 2.60 ignores a soft node affinity for an actor that asks for no resource at all (measured on
a three-node cluster: six such actors landed on two nodes, whatever node each named), so an actor
placed this way asks for :data:`PLACED_ACTOR_MEMORY_BYTES` of Ray's logical ``memory`` resource, a
kilobyte: not a CPU, which the cluster's tasks may hold all of (the actor would wait for one), and
nothing any node runs short of. On a single node nothing is asked and no affinity is set (as before).

Nodes with CPUs are preferred: a head started with ``--num-cpus=0`` (kept free of work, as Ray
advises for big clusters) gets no shard or host unless no node has a CPU. On one machine every
actor lands on its only node, as without this.

>>> deal_order(["head", "w1", "w2"], driver="head")
['w1', 'w2', 'head']
>>> Rotation(deal_order(["head", "w1", "w2"], driver="head")).take(4)
['w1', 'w2', 'head', 'w1']
>>> Rotation(["w1", "w2", "head"], start=2).take(2)  # the hosts of a second add_agents go on from there
['head', 'w1']
>>> deal_order(["solo"], driver="solo")
['solo']
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["PLACED_ACTOR_MEMORY_BYTES", "Rotation", "cluster_rotation", "deal_order", "soft_affinity"]

#: the logical memory an actor placed on a node asks for: any resource at all, so that Ray honours its soft affinity
PLACED_ACTOR_MEMORY_BYTES = 1024


def deal_order(node_ids: list[str], driver: Optional[str]) -> list[str]:
    """``node_ids`` in the order actors are dealt to them: sorted, the ``driver``'s node moved last."""
    if not node_ids:
        raise ValueError("no node to place actors on")
    ordered = sorted(set(node_ids))
    if driver in ordered:
        ordered.remove(driver)
        ordered.append(driver)
    return ordered


class Rotation:
    """Node ids in turn, endlessly: :meth:`take` the next ``count``."""

    def __init__(self, order: list[str], *, start: int = 0) -> None:
        if not order:
            raise ValueError("a rotation needs at least one node")
        self.order = list(order)
        self._next = start % len(self.order)

    def take(self, count: int) -> list[str]:
        taken = [self.order[(self._next + i) % len(self.order)] for i in range(count)]
        self._next = (self._next + count) % len(self.order)
        return taken

    def actor_options(self, count: int) -> list[dict[str, Any]]:
        """Ray actor options placing the next ``count`` actors (none on a single node)."""
        nodes = self.take(count)
        if len(self.order) == 1:
            return [{} for _ in nodes]
        return [{"scheduling_strategy": soft_affinity(node), "memory": PLACED_ACTOR_MEMORY_BYTES} for node in nodes]


def cluster_rotation(*, start: int = 0) -> Rotation:
    """The alive nodes of the Ray cluster this process is connected to, in dealing order, from the ``start``-th."""
    import ray

    alive = [node for node in ray.nodes() if node.get("Alive")]
    with_cpus = [node["NodeID"] for node in alive if node.get("Resources", {}).get("CPU", 0) > 0]
    return Rotation(deal_order(with_cpus or [node["NodeID"] for node in alive],
                               driver=ray.get_runtime_context().get_node_id()), start=start)


def soft_affinity(node_id: str) -> Any:
    """Ray's scheduling strategy for "on ``node_id`` while it is there, else anywhere"."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id, soft=True)
