"""What `decide` sees: one rollout, the fleet as the orchestrator knows it, the limits of time, and whether
this process holds the rollout's lease. Read only: a decision never changes what it is shown."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from flotilla_contracts.v1.heartbeat import ClusterHealth
from flotilla_upgrade_orchestrator.fleet import FleetCluster, FleetNode
from flotilla_upgrade_orchestrator.model import ClusterRec, NodeRec, Rollout
from flotilla_upgrade_orchestrator.timeouts import Timeouts
from flotilla_upgrade_orchestrator.windows import Openness, Window, openness

_NO_NODES: Mapping[str, FleetNode] = {}


@dataclass(frozen=True, slots=True)
class View:
    rollout: Rollout
    fleet: Mapping[str, FleetCluster]
    timeouts: Timeouts
    epoch: int | None  # our lease epoch on the rollout; None: not ours to write (I6)
    windows: tuple[Window, ...]
    active_at: float | None  # last command issued or report received (in memory: a restart starts it again)
    disruption: str = ""  # the fleet disruption holding one of its clusters, in words ("" when none)

    def cluster(self, cluster_id: str) -> ClusterRec:
        return self.rollout.clusters[cluster_id]

    def node(self, cluster_id: str, node_id: str) -> NodeRec:
        return next(n for n in self.rollout.clusters[cluster_id].nodes if n.node_id == node_id)

    def health(self, cluster_id: str) -> ClusterHealth:
        cluster = self.fleet.get(cluster_id)
        return ClusterHealth.UNKNOWN if cluster is None else cluster.health

    def fleet_nodes(self, cluster_id: str) -> Mapping[str, FleetNode]:
        cluster = self.fleet.get(cluster_id)
        return _NO_NODES if cluster is None else cluster.nodes

    def window(self, cluster: ClusterRec, now: datetime) -> Openness:
        """Is the cluster inside a maintenance window now, and if not, when does one open."""
        if not self.windows:
            return Openness(open=True)
        fleet = self.fleet.get(cluster.cluster_id)
        return openness(self.windows, {} if fleet is None else fleet.labels, now)
