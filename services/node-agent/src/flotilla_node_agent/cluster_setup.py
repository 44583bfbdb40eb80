"""Who a cluster is and the agent that speaks for it, built in one place: the sim mode, the bus login, the
Kubernetes mode and the fleet simulator all come here for a `ClusterIdentity` and a `ClusterAgent`."""

from __future__ import annotations

import asyncio
import hashlib

from nats.aio.client import Client
from nats.js import JetStreamContext

from flotilla_contracts.v1.registration import ClusterIdentity
from flotilla_node_agent.applier import ManifestApplier
from flotilla_node_agent.apply_backends import ApplyBackend
from flotilla_node_agent.cluster_agent import ClusterAgent, ClusterHandle, Connector, NodesSource
from flotilla_node_agent.journal import Journal
from flotilla_node_agent.settings import Settings
from flotilla_runtime.logs import BoundLogger
from flotilla_runtime.store import Store

SIM_LABELS = {"flotilla.dev/sim": "true"}  # a cluster of the fleet simulator


def sim_identity(key: str, name: str, version: str, labels: dict[str, str] | None = None) -> ClusterIdentity:
    """A simulated cluster: its uid is drawn from `key`, so it is the same cluster on every start."""
    return ClusterIdentity(
        uid=hashlib.sha256(key.encode()).hexdigest()[:32],
        name=name,
        kubernetes_version=version,
        provider="sim",
        labels=labels or {},
    )


def node_process_identity(settings: Settings) -> ClusterIdentity:
    """The one-node cluster a sim-driver agent process is (the same identity on every start)."""
    name = settings.cluster_name or settings.node_name.split(".")[0][:63]
    return sim_identity(settings.node_name, name, settings.sim_version)


def fleet_cluster_identity(seed: int, name: str, version: str) -> ClusterIdentity:
    """Cluster `name` of the fleet simulator run with `seed`."""
    return sim_identity(f"{seed}/{name}", name, version, SIM_LABELS)


def build_cluster_agent(
    identity: ClusterIdentity,
    token: str,
    nodes: NodesSource,
    log: BoundLogger,
    *,
    store: Store,
    journal: Journal,
    nc: Client | None = None,
    handle: ClusterHandle | None = None,
    connector: Connector | None = None,
    workloads: ApplyBackend | None = None,
    js: JetStreamContext | None = None,
    instance_id: str = "",
    report_every_s: float = 10.0,
    subscribe_gate: asyncio.Semaphore | None = None,
) -> ClusterAgent:
    """The cluster agent of `identity`: over `nc`, or its own connections through `connector`; with a
    `workloads` backend it also applies the workloads placed on the cluster (over `js`, creating its consumer
    within `subscribe_gate`, shared by the agents of one process: 10,000 cluster agents creating theirs at once
    timed the JetStream API out, docs/scale.md)."""
    agent = ClusterAgent(
        nc,
        store,
        journal,
        identity,
        token,
        nodes,
        handle if handle is not None else ClusterHandle(),
        log,
        report_every_s=report_every_s,
        connector=connector,
    )
    if workloads is not None:
        agent.workloads = ManifestApplier(js, store, workloads, log, instance_id=instance_id, gate=subscribe_gate)
    return agent
