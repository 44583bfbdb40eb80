"""Registration's lifecycle events: tokens, cluster membership, labels, taints and node inventory.

Cluster events carry a full `ClusterInfo` snapshot after the change, so a read model can be rebuilt
from the events alone by replaying `FLEET_EVENTS`.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from flotilla_contracts.envelope import Message
from flotilla_contracts.ids import ClusterIdField, NodeNameField
from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.common import K8sName, KubeVersion, LabelKey, Labels, ShortText, Taint, Text, Timestamp
from flotilla_contracts.v1.registration import ApprovalSource, ClusterInfo, JoinTokenInfo

ChangedFields = Annotated[list[ShortText], msgspec.Meta(max_length=64)]


class TokenCreated(Message, frozen=True, kw_only=True):
    """A join token was created (never carries the secret)."""

    SCHEMA = "registration.TokenCreated"

    token: JoinTokenInfo
    occurred_at: Timestamp


class TokenRevoked(Message, frozen=True, kw_only=True):
    """A join token was revoked."""

    SCHEMA = "registration.TokenRevoked"

    token: JoinTokenInfo
    occurred_at: Timestamp


class ClusterJoinRequested(Message, frozen=True, kw_only=True):
    """A new cluster asked to join; it is Pending unless approved in the same step (then Approved follows)."""

    SCHEMA = "registration.ClusterJoinRequested"

    cluster: ClusterInfo
    occurred_at: Timestamp


class ClusterApproved(Message, frozen=True, kw_only=True):
    """A cluster became a member: by its token, by policy, or by an admin."""

    SCHEMA = "registration.ClusterApproved"

    cluster: ClusterInfo
    approved_by: ApprovalSource
    occurred_at: Timestamp


class ClusterRejected(Message, frozen=True, kw_only=True):
    """A Pending cluster was rejected, with the reason its agent shows."""

    SCHEMA = "registration.ClusterRejected"

    cluster: ClusterInfo
    reason: Text
    occurred_at: Timestamp


class ClusterRejoined(Message, frozen=True, kw_only=True):
    """A known cluster identity joined again with its credential; same id, same history, facts updated."""

    SCHEMA = "registration.ClusterRejoined"

    cluster: ClusterInfo
    occurred_at: Timestamp


class ClusterLabelsChanged(Message, frozen=True, kw_only=True):
    """A cluster's labels changed; `cluster.labels` is the new full set."""

    SCHEMA = "registration.ClusterLabelsChanged"

    cluster: ClusterInfo
    previous: Labels = {}
    set_labels: Labels = {}
    removed_keys: Annotated[list[LabelKey], msgspec.Meta(max_length=64)] = []
    occurred_at: Timestamp


class ClusterTaintsChanged(Message, frozen=True, kw_only=True):
    """A cluster's taints changed; `cluster.taints` is the new full list."""

    SCHEMA = "registration.ClusterTaintsChanged"

    cluster: ClusterInfo
    added: Annotated[list[Taint], msgspec.Meta(max_length=64)] = []
    removed: Annotated[list[Taint], msgspec.Meta(max_length=64)] = []
    occurred_at: Timestamp


class ClusterDeregistered(Message, frozen=True, kw_only=True):
    """A cluster left the fleet; its credential no longer works and its nodes are gone from inventory."""

    SCHEMA = "registration.ClusterDeregistered"

    cluster: ClusterInfo
    reason: Text = ""
    occurred_at: Timestamp


class ClusterVersionChanged(Message, frozen=True, kw_only=True):
    """The cluster's Kubernetes version (its oldest API server, as its agents report) changed;
    `cluster.identity.kubernetes_version` is the new one."""

    SCHEMA = "registration.ClusterVersionChanged"

    cluster: ClusterInfo
    previous: KubeVersion
    occurred_at: Timestamp


class NodeAdded(Message, frozen=True, kw_only=True):
    """A node appeared in a member cluster's inventory."""

    SCHEMA = "registration.NodeAdded"

    cluster_id: ClusterIdField
    node: NodeFacts
    occurred_at: Timestamp


class NodeChanged(Message, frozen=True, kw_only=True):
    """A node's facts changed (versions, labels, taints, resources, conditions); `node` is the new state."""

    SCHEMA = "registration.NodeChanged"

    cluster_id: ClusterIdField
    node: NodeFacts
    changed_fields: ChangedFields = []
    occurred_at: Timestamp


class NodeRemoved(Message, frozen=True, kw_only=True):
    """A node left its cluster's inventory."""

    SCHEMA = "registration.NodeRemoved"

    cluster_id: ClusterIdField
    node_id: NodeNameField
    node_name: K8sName
    reason: Text = ""
    occurred_at: Timestamp
