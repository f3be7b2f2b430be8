"""How the stages of a job share a machine: the Ray reservation (logical CPUs, GPUs) and the torch
threads of each actor pool, and the CPUs each decode task reserves. One place, so the rule can be
read and tested over cluster shapes.

Two numbers per pool, deliberately separate:

* the Ray reservation only decides where and whether an actor is scheduled. On a CPU-only
  machine the reservations of one vision actor, one LLM actor and a decode task must fit in the
  node together, or the job waits forever (a read plus two stages at 1 CPU each on a 2-CPU node);
* the torch thread count decides how fast the actor runs. The stages take turns more than they
  overlap (the tower's call is long, the LLM's short), so on a CPU-only node the vision actor gets
  every core of its node share, and the LLM half of that, even though the reservations are
  fractions.

On GPUs the model work is on the accelerator: reservations and threads stay at the pool's
defaults (half a CPU, one thread, half a GPU each). Anything the user set explicitly wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import DEFAULT_POOL_CPUS, HiredProcessorConfig, PoolConfig

# Shares of a CPU-only node's logical CPUs reserved by one vision actor, one LLM actor and one
# decode task; they sum to one node so the three are always schedulable together.
CPU_SHARES = {"vision": 0.5, "llm": 0.25, "decode": 0.25}
# Threads as a share of the node's cores: the tower dominates a CPU job and gets all of them;
# the LLM (small, short calls at a 20% budget) gets half, so it does not stall the tower.
THREAD_SHARES = {"vision": 1.0, "llm": 0.5}
DECODE_CPUS_ON_GPU = 1.0


@dataclass(frozen=True)
class ClusterShape:
    """What a job sees of its Ray cluster.

    Attributes:
        nodes: alive nodes with CPUs.
        node_cpus: logical CPUs of the largest node (its cores, unless declared otherwise).
        gpus: GPUs in the whole cluster.
    """

    nodes: int
    node_cpus: float
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.node_cpus <= 0 or self.gpus < 0:
            raise ValueError(f"a cluster needs >= 1 node with CPUs, got {self}")

    @classmethod
    def from_ray(cls) -> ClusterShape:
        """The shape of the running Ray cluster (``ray.init`` done)."""
        import ray

        cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
        cpus = [c for c in cpus if c > 0] or [1.0]
        return cls(nodes=len(cpus), node_cpus=max(cpus), gpus=ray.cluster_resources().get("GPU", 0))


@dataclass(frozen=True)
class PoolResources:
    """One actor pool's Ray reservation per actor and torch threads per actor."""

    num_cpus: float
    num_gpus: float
    threads: int


@dataclass(frozen=True)
class StagePlan:
    """Resources of every stage of a job."""

    decode_cpus: float
    vision: PoolResources
    llm: PoolResources


def plan_resources(config: HiredProcessorConfig, cluster: ClusterShape, spare_cpus: float = 0.0) -> StagePlan:
    """Reservations and threads for ``config``'s stages on ``cluster``.

    CPU-only (no GPU in the cluster, none asked for, device not CUDA): shares of a node, divided
    among the actors of a pool that land on the same node. Otherwise the pools' own defaults.
    A pool's explicit ``num_cpus`` / ``num_gpus`` and the model's ``torch_threads`` always win;
    an explicit ``num_cpus`` without ``torch_threads`` gives its whole CPUs as threads.

    ``spare_cpus``: logical CPUs of a CPU-only node the shares leave unreserved (at most half the
    node), for stages that are not ours: a processor's user reads, maps and writes take Ray's
    default of 1 CPU a task, and would wait forever behind actors holding the whole node.
    Threads are not reduced: the stages take turns with the user's.
    """
    pools = {"vision": config.vision, "llm": config.llm}
    gpus = {role: pool.gpus(cluster.gpus) for role, pool in pools.items()}
    cpu_only = not any(gpus.values()) and not config.model.device.startswith("cuda")
    reservable = max(cluster.node_cpus - spare_cpus, cluster.node_cpus / 2)
    plans = {role: _pool(config, pool, role, gpus[role], cluster, cpu_only, reservable) for role, pool in pools.items()}
    decode = CPU_SHARES["decode"] * reservable if cpu_only else DECODE_CPUS_ON_GPU
    return StagePlan(decode_cpus=min(DECODE_CPUS_ON_GPU, decode), **plans)


def _pool(
    config: HiredProcessorConfig, pool: PoolConfig, role: str, gpus: float, cluster: ClusterShape, cpu_only: bool,
    reservable: float,
) -> PoolResources:
    per_node = math.ceil(pool.size / cluster.nodes)  # actors of this pool sharing one node
    if pool.num_cpus is not None:
        cpus = pool.num_cpus
    elif cpu_only:
        cpus = CPU_SHARES[role] * reservable / per_node
    else:
        cpus = DEFAULT_POOL_CPUS
    if config.model.torch_threads is not None:
        threads = config.model.torch_threads
    elif pool.num_cpus is not None or not cpu_only:
        threads = max(1, round(cpus))
    else:
        threads = max(1, math.floor(THREAD_SHARES[role] * cluster.node_cpus / per_node))
    return PoolResources(num_cpus=cpus, num_gpus=gpus, threads=threads)
