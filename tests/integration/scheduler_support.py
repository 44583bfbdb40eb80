"""Helpers for the scheduler's integration tests: publish registration/heartbeat/agent events as their owners do."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js import JetStreamContext

from flotilla_contracts import catalogue
from flotilla_contracts.envelope import H_MSG_ID, H_SCHEMA, Message, schema_id
from flotilla_contracts.v1.registration import ApprovalSource, ClusterIdentity, ClusterInfo, ClusterState
from flotilla_contracts.v1.registration_events import ClusterApproved

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


async def publish(js: JetStreamContext, event: Message, **ids: str) -> None:
    """One event on its catalogue subject with the schema header and a fresh id (JetStream dedupes on it)."""
    headers = {H_SCHEMA: schema_id(type(event)), H_MSG_ID: uuid.uuid4().hex}
    await js.publish(catalogue.subject_for(type(event), **ids), msgspec.json.encode(event), headers=headers)


def approved(cluster_id: str, **labels: str) -> ClusterApproved:
    info = ClusterInfo(
        cluster_id=cluster_id,
        identity=ClusterIdentity(uid=f"uid-{cluster_id}", name=cluster_id, kubernetes_version="v1.30.4"),
        state=ClusterState.APPROVED,
        labels=labels,
        joined_at=NOW,
        updated_at=NOW,
    )
    return ClusterApproved(cluster=info, approved_by=ApprovalSource.ADMIN, occurred_at=NOW)


def deployment_spec(name: str, selector: str, **policy: Any) -> dict[str, Any]:
    return {
        "name": name,
        "manifests": [{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": {}}],
        "policy": {"selector": selector, **policy},
    }
