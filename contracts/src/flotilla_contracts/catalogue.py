"""The catalogue: every subject Flotilla uses and the message types that travel on it.

It is the single source for the committed JSON Schemas, the AsyncAPI document and the subject map in
docs/contracts.md, and for the runtime's schema look-ups. A new message is added here, or it does not
exist. Handlers build subjects from it (`subject_for(MessageType, cluster_id=...)`), never by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property

from flotilla_contracts import subjects
from flotilla_contracts.envelope import Message, schema_id
from flotilla_contracts.ids import CLUSTER_AGENT_NODE, check_token
from flotilla_contracts.subjects import Entity, Service
from flotilla_contracts.v1 import agent as v1_agent
from flotilla_contracts.v1 import deadletter as v1_deadletter
from flotilla_contracts.v1 import heartbeat as v1_heartbeat
from flotilla_contracts.v1 import registration as v1_reg
from flotilla_contracts.v1 import registration_events as v1_reg_evt
from flotilla_contracts.v1 import scheduler as v1_sched
from flotilla_contracts.v1 import scheduler_events as v1_sched_evt
from flotilla_contracts.v1 import security as v1_security
from flotilla_contracts.v1 import service as v1_service
from flotilla_contracts.v1 import upgrade as v1_upgrade
from flotilla_contracts.v1 import upgrade_status as v1_upstat


class Kind(StrEnum):
    COMMAND = "command"  # request/reply on fleet.v1.cmd.<service>.<verb>
    EVENT = "event"  # JetStream FLEET_EVENTS, fleet.v1.evt.<entity>.<id...>.<event>
    HEARTBEAT = "heartbeat"  # core NATS, fleet.v1.hb.<cluster>.<node>
    AGENT_COMMAND = "agent_command"  # JetStream FLEET_AGENT, fleet.v1.agent.<cluster>.<node>.<verb>


# Names a subject pattern may hold in braces; each stands for one token.
PLACEHOLDERS: dict[str, str] = {
    "service": "Service name (see subjects.Service)",
    "cluster_id": "Cluster id",
    "node_id": "Node token: the Kubernetes node name with dots as underscores (ids.node_token)",
    "token_id": "Join token id",
    "subscription": "Subscription name",
    "rollout_id": "Rollout id",
    "wave": "Wave number, 0 first",
    "scope": "What a fleet-wide scheduler event covers: `_fleet` (scheduler_events.FLEET_SCOPE), no subscription",
}
_PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Operation:
    """One subject pattern ({placeholders} for ids), its message, its reply for commands, and its owner."""

    kind: Kind
    subject: str
    message: type[Message]
    owner: Service | None  # who serves the command or emits the event; None: every service
    summary: str
    reply: type[Message] | None = None
    sender: Service | None = None  # agent commands: who publishes them (the owner receives)

    @cached_property
    def placeholders(self) -> tuple[str, ...]:
        """The placeholder names in the subject pattern, in order."""
        return tuple(_PLACEHOLDER_RE.findall(self.subject))

    @cached_property
    def _placeholder_set(self) -> frozenset[str]:
        return frozenset(self.placeholders)

    @property
    def filter(self) -> str:
        """The pattern as a NATS subscription filter: each placeholder becomes `*`."""
        return _PLACEHOLDER_RE.sub("*", self.subject)

    def fill(self, **ids: str) -> str:
        """The concrete subject; every id must be given and be a token."""
        names = self.placeholders
        if ids.keys() != self._placeholder_set:
            missing, extra = set(names) - set(ids), set(ids) - set(names)
            raise KeyError(f"{self.subject}: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for name in names:
            check_token(name, ids[name])
        return self.subject.format_map(ids)  # hot (every event a service emits): no regex per call

    def ids_in(self, subject: str) -> dict[str, str] | None:
        """The inverse of `fill`: the ids a concrete subject carries, or None when it is not of this pattern.

        This is how a service learns who sent a member's message: the subject's tokens are what the
        sender's bus grant vouched for, unlike the body (see docs/security.md).
        """
        pattern = self.subject.split(".")
        tokens = subject.split(".")
        if len(tokens) != len(pattern):
            return None
        ids: dict[str, str] = {}
        for want, got in zip(pattern, tokens, strict=True):
            name = _PLACEHOLDER_RE.fullmatch(want)
            if name is not None:
                if not got or got in ("*", ">"):
                    return None
                ids[name.group(1)] = got
            elif want != got:
                return None
        return ids


def _cmd(service: Service | None, verb: str) -> str:
    name = "{service}" if service is None else service.value
    return f"{subjects.CMD_PREFIX}.{name}.{verb}"


def _evt(entity: Entity, ids: str, name: str) -> str:
    return f"{subjects.EVT_PREFIX}.{entity.value}.{ids}.{name}"


_REG = Service.REGISTRATION
_HB = Service.HEARTBEAT
_SCHED = Service.SCHEDULER
_UPG = Service.UPGRADE_ORCHESTRATOR
_AGENT = Service.NODE_AGENT


def _command(
    service: Service | None, verb: str, message: type[Message], reply: type[Message], summary: str
) -> Operation:
    return Operation(Kind.COMMAND, _cmd(service, verb), message, service, summary, reply)


def _event(
    owner: Service | None, entity: Entity, ids: str, name: str, message: type[Message], summary: str
) -> Operation:
    return Operation(Kind.EVENT, _evt(entity, ids, name), message, owner, summary)


_CLUSTER = "{cluster_id}"
_NODE = "{cluster_id}.{node_id}"

# A table, laid out by hand for reading.
# fmt: off
OPERATIONS: list[Operation] = [
    _command(None, "info", v1_service.InfoRequest, v1_service.InfoReply,
             "Any service: its name, instance, versions, schemas and state path."),
    # --- registration: commands ---
    _command(_REG, "tokens.create", v1_reg.CreateTokenRequest, v1_reg.CreateTokenReply,
             "Create a join token; the secret is shown once."),
    _command(_REG, "tokens.list", v1_reg.ListTokensRequest, v1_reg.ListTokensReply, "List join tokens."),
    _command(_REG, "tokens.revoke", v1_reg.RevokeTokenRequest, v1_reg.RevokeTokenReply,
             "Revoke a join token."),
    _command(_REG, "join", v1_reg.JoinRequest, v1_reg.JoinReply,
             "A cluster agent joins (token) or re-joins (credential); idempotent by request id."),
    _command(_REG, "clusters.approve", v1_reg.ApproveClusterRequest, v1_reg.ClusterReply,
             "Approve a Pending cluster."),
    _command(_REG, "clusters.reject", v1_reg.RejectClusterRequest, v1_reg.ClusterReply,
             "Reject a Pending cluster with a reason."),
    _command(_REG, "clusters.list", v1_reg.ListClustersRequest, v1_reg.ListClustersReply,
             "List clusters by label selector, paged."),
    _command(_REG, "clusters.get", v1_reg.GetClusterRequest, v1_reg.ClusterReply, "One cluster and its nodes."),
    _command(_REG, "clusters.label", v1_reg.LabelClusterRequest, v1_reg.ClusterReply,
             "Set and remove cluster labels."),
    _command(_REG, "clusters.taint", v1_reg.TaintClusterRequest, v1_reg.ClusterReply,
             "Add and remove cluster taints."),
    _command(_REG, "clusters.deregister", v1_reg.DeregisterClusterRequest, v1_reg.ClusterReply,
             "Remove a cluster from the fleet; its credential stops working."),
    _command(_REG, "clusters.hostkeys.set", v1_reg.SetHostKeysRequest, v1_reg.SetHostKeysReply,
             "Replace the SSH keys a cluster's agents keep in authorized_keys."),
    _command(_REG, "nodes.list", v1_reg.ListNodesRequest, v1_reg.ListNodesReply,
             "List the node inventory of a cluster or the fleet, paged."),
    _command(_REG, "nodes.report", v1_reg.ReportNodesRequest, v1_reg.ReportNodesReply,
             "An agent reports node facts with its cluster credential."),
    # --- registration: events ---
    _event(_REG, Entity.TOKEN, "{token_id}", "created", v1_reg_evt.TokenCreated, "A join token was created."),
    _event(_REG, Entity.TOKEN, "{token_id}", "revoked", v1_reg_evt.TokenRevoked, "A join token was revoked."),
    _event(_REG, Entity.CLUSTER, _CLUSTER, "join-requested", v1_reg_evt.ClusterJoinRequested,
           "A new cluster asked to join."),
    _event(_REG, Entity.CLUSTER, _CLUSTER, "approved", v1_reg_evt.ClusterApproved, "A cluster was approved."),
    _event(_REG, Entity.CLUSTER, _CLUSTER, "rejected", v1_reg_evt.ClusterRejected, "A cluster was rejected."),
    _event(_REG, Entity.CLUSTER, _CLUSTER, "rejoined", v1_reg_evt.ClusterRejoined,
           "A known cluster joined again with its credential."),
    _event(_REG, Entity.CLUSTER, _CLUSTER, "labels-changed", v1_reg_evt.ClusterLabelsChanged,
           "A cluster's labels changed."),
    _event(_REG, Entity.CLUSTER, _CLUSTER, "taints-changed", v1_reg_evt.ClusterTaintsChanged,
           "A cluster's taints changed."),
    _event(_REG, Entity.CLUSTER, _CLUSTER, "deregistered", v1_reg_evt.ClusterDeregistered,
           "A cluster left the fleet."),
    _event(_REG, Entity.CLUSTER, _CLUSTER, "version-changed", v1_reg_evt.ClusterVersionChanged,
           "A cluster's Kubernetes version (its oldest reported API server) changed."),
    _event(_REG, Entity.NODE, _NODE, "added", v1_reg_evt.NodeAdded, "A node joined a cluster's inventory."),
    _event(_REG, Entity.NODE, _NODE, "changed", v1_reg_evt.NodeChanged, "A node's facts changed."),
    _event(_REG, Entity.NODE, _NODE, "removed", v1_reg_evt.NodeRemoved, "A node left a cluster's inventory."),
    _event(_REG, Entity.HOST_KEYS, _CLUSTER, "set", v1_agent.HostKeysSet,
           "The SSH key set of a cluster was replaced; its agents reconcile authorized_keys."),
    # --- heartbeat ---
    Operation(Kind.HEARTBEAT, f"{subjects.HB_PREFIX}.{_NODE}", v1_heartbeat.Heartbeat, _AGENT,
              "A node's periodic heartbeat (core NATS, not stored)."),
    Operation(Kind.HEARTBEAT, f"{subjects.HB_PREFIX}.{_CLUSTER}", v1_heartbeat.HeartbeatBatch, _AGENT,
              "Several nodes' heartbeats of one cluster from one speaker for them (core NATS, not stored)."),
    _command(_HB, "config.get", v1_heartbeat.HeartbeatConfigRequest, v1_heartbeat.HeartbeatConfig,
             "The heartbeat interval and detection settings the service announces."),
    _command(_HB, "health.summary", v1_heartbeat.FleetHealthRequest, v1_heartbeat.FleetHealthReply,
             "Fleet counts by health state and the worst clusters (per replica partition)."),
    _command(_HB, "health.clusters", v1_heartbeat.ClustersHealthRequest, v1_heartbeat.ClustersHealthReply,
             "Health of clusters, paged."),
    _command(_HB, "health.nodes", v1_heartbeat.NodesHealthRequest, v1_heartbeat.NodesHealthReply,
             "Health, versions and last contact of nodes, paged."),
    _event(_HB, Entity.NODE_HEALTH, _NODE, "changed", v1_heartbeat.NodeHealthChanged,
           "A node's health changed (Ready, NotReady, Unreachable, Lost)."),
    _event(_HB, Entity.CLUSTER_HEALTH, _CLUSTER, "changed", v1_heartbeat.ClusterHealthChanged,
           "A cluster's health changed (Ready, Degraded, Unreachable, Unknown)."),
    _event(_HB, Entity.CLUSTER_HEALTH, _CLUSTER, "capacity-changed", v1_heartbeat.ClusterCapacityChanged,
           "A cluster's summed capacity or allocatable resources changed notably."),
    _event(_HB, Entity.HEARTBEAT_NOISE, _CLUSTER, "reported", v1_heartbeat.HeartbeatNoiseReported,
           "Heartbeats from a non-member cluster were dropped (once per window)."),
    # --- scheduler ---
    _command(_SCHED, "subscriptions.apply", v1_sched.ApplySubscriptionRequest, v1_sched.ApplySubscriptionReply,
             "Create or replace a subscription."),
    _command(_SCHED, "subscriptions.batch.apply", v1_sched.ApplySubscriptionsRequest,
             v1_sched.ApplySubscriptionsReply,
             f"Create or replace up to {v1_sched.MAX_APPLY_BATCH} subscriptions, one result each, in order."),
    _command(_SCHED, "subscriptions.list", v1_sched.ListSubscriptionsRequest, v1_sched.ListSubscriptionsReply,
             "List subscriptions, paged."),
    _command(_SCHED, "subscriptions.get", v1_sched.GetSubscriptionRequest, v1_sched.GetSubscriptionReply,
             "A subscription with placements and applied status."),
    _command(_SCHED, "subscriptions.rendered", v1_sched.GetRenderedRequest, v1_sched.GetRenderedReply,
             "A subscription's manifests rendered for one cluster."),
    _command(_SCHED, "subscriptions.delete", v1_sched.DeleteSubscriptionRequest,
             v1_sched.DeleteSubscriptionReply, "Delete a subscription and remove its workloads."),
    _event(_SCHED, Entity.SUBSCRIPTION, "{subscription}", "applied", v1_sched_evt.SubscriptionApplied,
           "A subscription was created or changed."),
    _event(_SCHED, Entity.SUBSCRIPTION, "{subscription}", "deleted", v1_sched_evt.SubscriptionDeleted,
           "A subscription was deleted."),
    _event(_SCHED, Entity.PLACEMENT, "{subscription}", "decided", v1_sched_evt.PlacementDecided,
           "A subscription was (re-)placed, with the reason and what moved."),
    _event(_SCHED, Entity.PLACEMENT, "{scope}", "disrupted", v1_sched_evt.FleetDisrupted,
           "Much of the fleet went Unreachable at once: re-placement away from Unreachable clusters is held."),
    _event(_SCHED, Entity.PLACEMENT, "{scope}", "recovered", v1_sched_evt.FleetRecovered,
           "A fleet disruption ended: re-placement resumes."),
    Operation(Kind.AGENT_COMMAND, f"{subjects.AGENT_PREFIX}.{_CLUSTER}.{CLUSTER_AGENT_NODE}.apply",
              v1_sched_evt.ApplyManifests, _AGENT,
              "The cluster agent applies (or removes) one subscription's manifests.", sender=_SCHED),
    _event(_AGENT, Entity.APPLIED, "{cluster_id}.{subscription}", "reported", v1_sched_evt.AppliedStatusReported,
           "A cluster agent reports applying one subscription."),
    # --- upgrade-orchestrator ---
    _command(_UPG, "upgrade.plan", v1_upgrade.PlanRequest, v1_upgrade.PlanReply,
             "Dry run: waves, steps, skew checks, refusals and estimate."),
    _command(_UPG, "upgrade.start", v1_upgrade.StartRolloutRequest, v1_upgrade.StartRolloutReply,
             "Start a rollout."),
    _command(_UPG, "upgrade.pause", v1_upgrade.PauseRolloutRequest, v1_upstat.RolloutReply, "Pause a rollout."),
    _command(_UPG, "upgrade.resume", v1_upgrade.ResumeRolloutRequest, v1_upstat.RolloutReply,
             "Resume a paused or frozen rollout."),
    _command(_UPG, "upgrade.abort", v1_upgrade.AbortRolloutRequest, v1_upstat.RolloutReply, "Abort a rollout."),
    _command(_UPG, "upgrade.approve", v1_upgrade.ApproveWaveRequest, v1_upstat.RolloutReply,
             "Approve a wave that waits for manual approval."),
    _command(_UPG, "upgrade.retry", v1_upgrade.RetryRequest, v1_upstat.RolloutReply,
             "Retry failed clusters (all or one) against the pinned target."),
    _command(_UPG, "upgrade.skip", v1_upgrade.SkipClusterRequest, v1_upstat.RolloutReply,
             "Leave a cluster out of a rollout."),
    _command(_UPG, "upgrade.rollback", v1_upgrade.RollbackRequest, v1_upstat.RolloutReply,
             "Stop a rollout and return the nodes it can to their previous version."),
    _command(_UPG, "upgrade.list", v1_upstat.ListRolloutsRequest, v1_upstat.ListRolloutsReply,
             "List rollouts."),
    _command(_UPG, "upgrade.status", v1_upstat.RolloutStatusRequest, v1_upstat.RolloutStatusReply,
             "A rollout's waves, clusters, nodes, failures and freeze reason."),
    _event(_UPG, Entity.ROLLOUT, "{rollout_id}", "started", v1_upstat.RolloutStarted, "A rollout started."),
    _event(_UPG, Entity.ROLLOUT, "{rollout_id}", "state-changed", v1_upstat.RolloutStateChanged,
           "A rollout changed state."),
    _event(_UPG, Entity.ROLLOUT, "{rollout_id}", "frozen", v1_upstat.RolloutFrozen,
           "A rollout (or one of its clusters) froze, with the reason."),
    _event(_UPG, Entity.ROLLOUT, "{rollout_id}", "unfrozen", v1_upstat.RolloutUnfrozen,
           "A freeze ended, with the reason."),
    _event(_UPG, Entity.ROLLOUT, "{rollout_id}", "version-drift", v1_upstat.VersionDriftDetected,
           "A node of a cluster the rollout upgraded reports an older version than its target."),
    _event(_UPG, Entity.ROLLOUT_WAVE, "{rollout_id}.{wave}", "state-changed", v1_upstat.WaveStateChanged,
           "A wave changed state."),
    _event(_UPG, Entity.ROLLOUT_CLUSTER, "{rollout_id}.{cluster_id}", "state-changed",
           v1_upstat.ClusterRolloutStateChanged, "A cluster changed state in a rollout."),
    _event(_UPG, Entity.ROLLOUT_NODE, "{rollout_id}.{cluster_id}.{node_id}", "state-changed",
           v1_upstat.NodeStepStateChanged, "A node changed step state in a rollout."),
    # --- node-agent ---
    Operation(Kind.AGENT_COMMAND, f"{subjects.AGENT_PREFIX}.{_NODE}.step", v1_agent.NodeStepCommand, _AGENT,
              "Perform one upgrade step on one node (lease epoch checked).", sender=_UPG),
    _event(_AGENT, Entity.NODE_STEP, _NODE, "reported", v1_agent.NodeStepReported,
           "An agent reports a step: accepted, progress, succeeded, failed or refused."),
    _event(_AGENT, Entity.DEAD_LETTER, "{service}." + _CLUSTER, "recorded", v1_deadletter.AgentDeadLettered,
           "A cluster's agent (service node-agent) gave up on one of that cluster's messages, with the reason."),
    # --- every service ---
    _event(None, Entity.DEAD_LETTER, "{service}", "recorded", v1_deadletter.DeadLettered,
           "A service gave up on a message, with the reason."),
    _event(None, Entity.SECURITY, "{service}." + _CLUSTER, "refused", v1_security.MemberRefused,
           "A service refused a member cluster's messages (once per sender, reason and window, with a count)."),
]
# fmt: on


def message_types() -> list[type[Message]]:
    """Every message type in the catalogue, requests, replies and events, once each, sorted by schema."""
    seen: dict[str, type[Message]] = {}
    for op in OPERATIONS:
        for message in (op.message, op.reply):
            if message is not None:
                seen.setdefault(schema_id(message), message)
    return [seen[key] for key in sorted(seen)]


def by_schema() -> dict[str, type[Message]]:
    """Index of message types by their schema id ("<domain>.<Name>/v<N>")."""
    return {schema_id(message): message for message in message_types()}


def operation_for(message_type: type[Message]) -> Operation:
    """The operation whose request (or event, heartbeat, agent command) is this message type."""
    op = _BY_MESSAGE.get(message_type)
    if op is None:
        found = [op for op in OPERATIONS if op.message is message_type]
        if len(found) != 1:
            raise LookupError(f"{message_type.__name__} is the message of {len(found)} operations, not 1")
        op = _BY_MESSAGE[message_type] = found[0]
    return op


_BY_MESSAGE: dict[type[Message], Operation] = {}  # operation_for's answers (OPERATIONS never changes)


def subject_for(message_type: type[Message], **ids: str) -> str:
    """The subject a message of this type is published on, e.g. `subject_for(ClusterApproved, cluster_id=c)`."""
    return operation_for(message_type).fill(**ids)
