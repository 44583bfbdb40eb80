"""What node-agents are told and what they report: node steps, node facts and host keys.

Node steps travel on `fleet.v1.agent.<cluster>.<node>.step` (JetStream work queue, one durable consumer
per node). A Kubernetes node name may hold dots; its subject token comes from `ids.node_token` and the
original name is always carried in the body as `node_name`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import msgspec

from flotilla_contracts.envelope import Message
from flotilla_contracts.ids import ClusterIdField, CommandIdField, NodeNameField, RolloutIdField
from flotilla_contracts.v1.common import (
    K8sName,
    KubeVersion,
    NodeCondition,
    NodeLabels,
    NodeRole,
    PodRef,
    Resources,
    Seconds,
    ShortText,
    Taint,
    Text,
    Timestamp,
)


class NodeFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What an agent knows of its node: identity, role, versions, labels, resources and conditions."""

    node_id: NodeNameField
    node_name: K8sName
    role: NodeRole
    kubelet_version: KubeVersion
    kube_proxy_version: KubeVersion | None = None
    kubeadm_version: KubeVersion | None = None
    # Control-plane nodes: the version of the API server running on the node (its /version), when known.
    api_server_version: KubeVersion | None = None
    os_image: ShortText = ""
    kernel_version: ShortText = ""
    container_runtime: ShortText = ""
    architecture: ShortText = ""
    labels: NodeLabels = {}
    taints: Annotated[list[Taint], msgspec.Meta(max_length=64)] = []
    unschedulable: bool = False
    capacity: Resources = Resources()
    allocatable: Resources = Resources()
    conditions: Annotated[list[NodeCondition], msgspec.Meta(max_length=16)] = []
    pod_count: Annotated[int, msgspec.Meta(ge=0)] = 0


class StepKind(StrEnum):
    """One step of a node upgrade, in the order the orchestrator issues them (rollback reverses one)."""

    CORDON = "cordon"
    DRAIN = "drain"
    UPGRADE = "upgrade"
    VERIFY = "verify"
    UNCORDON = "uncordon"
    ROLLBACK = "rollback"


class KubeadmAction(StrEnum):
    """`kubeadm upgrade apply` on the first control-plane node, `kubeadm upgrade node` on the others."""

    APPLY = "apply"
    NODE = "node"


class DrainOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How to drain: eviction only (I5); DaemonSet and mirror pods are always skipped."""

    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=86400)] = 600.0
    delete_emptydir_data: bool = False
    evict_unmanaged_pods: bool = False
    # Only when the plan says so: delete pods whose eviction still fails at the timeout (breaks I5's default).
    force_delete_on_timeout: bool = False
    pod_grace_period_s: Annotated[int, msgspec.Meta(ge=0)] | None = None
    eviction_retry_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0


class TargetVersions(msgspec.Struct, frozen=True, kw_only=True):
    """Versions a step moves the node to; package versions default to the Kubernetes version."""

    kubernetes_version: KubeVersion
    kubeadm_version: KubeVersion | None = None
    kubelet_version: KubeVersion | None = None
    kubectl_version: KubeVersion | None = None


class NodeStepCommand(Message, frozen=True, kw_only=True):
    """Perform one step on one node, at most once per (rollout, node, step); refuse a stale epoch (I6)."""

    SCHEMA = "agent.NodeStepCommand"

    command_id: CommandIdField
    rollout_id: RolloutIdField
    epoch: Annotated[int, msgspec.Meta(ge=0, description="Lease epoch of the issuing rollout writer")]
    cluster_id: ClusterIdField
    node_id: NodeNameField
    node_name: K8sName
    step: StepKind
    target: TargetVersions
    # Previous versions: what `rollback` returns to and what `verify` must no longer see.
    previous: TargetVersions | None = None
    kubeadm_action: KubeadmAction | None = None
    drain: DrainOptions = DrainOptions()
    deadline: Timestamp
    attempt: Annotated[int, msgspec.Meta(ge=1)] = 1
    issued_at: Timestamp


class StepOutcome(StrEnum):
    """Where a step stands in an agent's report."""

    ACCEPTED = "accepted"
    PROGRESS = "progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REFUSED = "refused"


class RefusalReason(StrEnum):
    """Why an agent refused a command without executing it."""

    STALE_EPOCH = "stale_epoch"
    WRONG_NODE = "wrong_node"
    DEADLINE_PASSED = "deadline_passed"
    UNSUPPORTED_STEP = "unsupported_step"
    PRECONDITION_FAILED = "precondition_failed"


class StepProgress(msgspec.Struct, frozen=True, kw_only=True):
    """Progress of a long step, e.g. a drain: pods evicted and still to go."""

    pods_total: Annotated[int, msgspec.Meta(ge=0)] = 0
    pods_evicted: Annotated[int, msgspec.Meta(ge=0)] = 0
    pods_remaining: Annotated[int, msgspec.Meta(ge=0)] = 0
    phase: ShortText = ""


class NodeStepReported(Message, frozen=True, kw_only=True):
    """An agent's report on a step: accepted, progress, succeeded, failed or refused, with details."""

    SCHEMA = "agent.NodeStepReported"

    command_id: CommandIdField
    rollout_id: RolloutIdField
    epoch: Annotated[int, msgspec.Meta(ge=0)]
    cluster_id: ClusterIdField
    node_id: NodeNameField
    node_name: K8sName
    step: StepKind
    outcome: StepOutcome
    refusal: RefusalReason | None = None
    reason: ShortText = ""
    message: Text = ""
    progress: StepProgress | None = None
    blocking_pods: Annotated[list[PodRef], msgspec.Meta(max_length=100)] = []
    # Cordon only: the node was already unschedulable before us, so it must not be uncordoned by us (I9).
    was_cordoned: bool = False
    kubelet_version: KubeVersion | None = None
    # True when the agent answers from its journal: the step had already taken effect (I4).
    replayed: bool = False
    duration_s: Seconds = 0.0
    occurred_at: Timestamp


def step_report(
    command: NodeStepCommand, outcome: StepOutcome, occurred_at: datetime, **fields: Any
) -> NodeStepReported:
    """The report of `command` with `outcome`: the command's identity copied, the rest from `fields`. The node-agent
    and every test agent build their reports here, so they cannot disagree on what a report names."""
    return NodeStepReported(
        command_id=command.command_id,
        rollout_id=command.rollout_id,
        epoch=command.epoch,
        cluster_id=command.cluster_id,
        node_id=command.node_id,
        node_name=command.node_name,
        step=command.step,
        outcome=outcome,
        occurred_at=occurred_at,
        **fields,
    )


class HostKey(msgspec.Struct, frozen=True, kw_only=True):
    """One SSH public key line for the managed `authorized_keys` block."""

    key: Annotated[
        str,
        msgspec.Meta(
            pattern=r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+$",
            max_length=16384,
            description="Key type and base64 key, without comment or options",
        ),
    ]
    comment: Annotated[str, msgspec.Meta(pattern=r"^[^\n\r]*$", max_length=256)] = ""


class HostKeysSet(Message, frozen=True, kw_only=True):
    """The full set of SSH keys a cluster's agents keep in their managed block; replaces the last set."""

    SCHEMA = "agent.HostKeysSet"

    cluster_id: ClusterIdField
    revision: Annotated[int, msgspec.Meta(ge=1)]
    keys: Annotated[list[HostKey], msgspec.Meta(max_length=256)] = []
    occurred_at: Timestamp
