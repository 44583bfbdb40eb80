"""The simulated fleet's vocabulary (fault names, node names), checked alike by the sim and `flotilla sim`.

`python -m flotilla_node_agent.fleet_sim` names its clusters `<prefix>-<cluster index, 4 digits>` and their nodes
`<cluster>-n<node index, 2 digits>` (from 0; node 0 is the control plane). `--fault NODE=FAULT` places a
fault on one of them. The sim (a service) and the CLI (a library) both refuse a bad `--fault` with the same
words, so the rule lives here, in the one package both import.
"""

from __future__ import annotations

import re

# Faults a simulated node can carry; these are also drawn at random (`--fail-rate`).
FAULTS = ("drain_blocked", "upgrade_fails", "not_ready_after_upgrade", "agent_crash")
# Faults only ever placed by name, never drawn: a transient failure that a retry gets past, as a flaky
# package mirror would cause.
NAMED_FAULTS = ("upgrade_fails_once",)
ALL_FAULTS = FAULTS + NAMED_FAULTS

_NODE_RE = re.compile(r"-(?P<cluster>\d{4,})-n(?P<node>\d{2,})")


class FaultError(ValueError):
    """A `--fault` that cannot be placed; the message is one line that names the valid choices."""


def cluster_name(prefix: str, index: int) -> str:
    """The name of a sim's cluster number `index` (from 0)."""
    return f"{prefix}-{index:04d}"


def node_name(cluster: str, index: int) -> str:
    """The name of a simulated cluster's node number `index` (from 0, the control plane)."""
    return f"{cluster}-n{index:02d}"


def is_sim_node(name: str, *, prefix: str, clusters: int, nodes: int) -> bool:
    """True when `name` is a node of a sim of `clusters` x `nodes` under `prefix`."""
    if not name.startswith(prefix):
        return False
    match = _NODE_RE.fullmatch(name, len(prefix))
    if match is None:
        return False
    cluster, node = int(match["cluster"]), int(match["node"])
    return cluster < clusters and node < nodes and name == node_name(cluster_name(prefix, cluster), node)


def parse_fault(item: str, *, prefix: str, clusters: int, nodes: int) -> tuple[str, str]:
    """`NODE=FAULT` as (node, fault); FaultError unless FAULT is known and NODE is a node of this sim."""
    node, sep, fault = item.partition("=")
    first = node_name(cluster_name(prefix, 0), 0)
    if not sep or not node:
        raise FaultError(f"--fault {item!r}: use NODE=FAULT, e.g. {first}={ALL_FAULTS[0]}")
    if fault not in ALL_FAULTS:
        raise FaultError(f"--fault {item!r}: unknown fault {fault!r}; faults: {', '.join(ALL_FAULTS)}")
    if not is_sim_node(node, prefix=prefix, clusters=clusters, nodes=nodes):
        last = node_name(cluster_name(prefix, clusters - 1), nodes - 1)
        raise FaultError(
            f"--fault {item!r}: {node!r} is not a node of this sim; its nodes are {first} to {last} "
            f"({prefix}-<cluster 0000-{clusters - 1:04d}>-n<node 00-{nodes - 1:02d}>)"
        )
    return node, fault
