"""Quotas that hold: what a member cluster sends beyond its bounds is refused before it creates any state."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import pytest
from nats.aio.msg import Msg

from flotilla_client.loadgen import template
from flotilla_contracts.v1.agent import NodeFacts
from flotilla_contracts.v1.common import NodeRole
from flotilla_contracts.v1.registration import ClusterState
from flotilla_contracts.v1.registration_events import NodeAdded
from flotilla_contracts.v1.security import MemberRefused, RefusalReason
from flotilla_heartbeat.domain import HealthModel
from flotilla_heartbeat.health_state import Policy
from flotilla_heartbeat.ingest import Ingest
from flotilla_heartbeat.membership import Membership
from flotilla_heartbeat.noise import NoiseWindow
from flotilla_heartbeat.quota import Quota
from flotilla_runtime.metrics import Registry
from flotilla_runtime.trust import RefusalLedger

POLICY = Policy(interval_s=10.0, missed_intervals=3, startup_grace_s=0.0)


class Rig:
    """One tracked cluster `c1` fed through the real ingest path, on an injected clock."""

    def __init__(self, quota: Quota, *, inventory: Iterable[str] = ()) -> None:
        self.model = HealthModel(POLICY, started=0.0, wall_offset=1.7e9)
        self.model.add_cluster("c1")
        for node in inventory:
            self.model.add_node("c1", node, node, 0.0, listed=True)
        self.clock = [0.0]
        self.ledger = RefusalLedger("heartbeat", Registry(), clock=lambda: self.clock[0])
        self.ingest = Ingest(
            self.model,
            NoiseWindow(60.0),
            lambda _c: pytest.fail("no membership noise expected"),
            quota=quota,
            ledger=self.ledger,
            max_bytes=256 * 1024,
            now=lambda: (self.clock[0], self.clock[0] + 1.7e9),
        )

    def send(self, nodes: Iterable[str], *, body_node: str | None = None) -> None:
        for node in nodes:
            head, middle, tail = template("c1", body_node or node)
            body = b"".join((head, b"1", middle, b"2023-11-14T22:13:20Z", tail))
            self.ingest._buffer.append(Msg(_client=None, subject=f"fleet.v1.hb.c1.{node}", data=body))  # type: ignore[arg-type]
        self.ingest.flush()

    def tracked(self) -> int:
        return len(self.model.clusters["c1"].nodes)

    def events(self) -> list[MemberRefused]:
        return [event for _, event in self.ingest.take_refusals()]


def test_invented_nodes_of_a_cluster_with_an_inventory_are_refused_and_its_real_nodes_still_count() -> None:
    rig = Rig(Quota(max_nodes=5000, interval_s=10.0), inventory=["n0", "n1", "n2"])
    rig.send(f"fake-{i}" for i in range(20_000))
    rig.send(["n0", "n1", "n2"])
    assert rig.tracked() == 3
    assert rig.ingest.applied == 3
    assert rig.ingest.dropped == {RefusalReason.UNKNOWN_NODE: 20_000}
    events = rig.events()
    assert [(e.cluster_id, e.reason, e.refused) for e in events] == [("c1", RefusalReason.UNKNOWN_NODE, 1)]
    assert rig.ledger.totals[RefusalReason.UNKNOWN_NODE] == 20_000


def test_without_an_inventory_the_node_quota_is_the_backstop() -> None:
    rig = Rig(Quota(max_nodes=100, interval_s=10.0, headroom=1000.0))
    rig.send(f"fake-{i}" for i in range(5_000))
    assert rig.tracked() == 100
    assert rig.ingest.dropped == {RefusalReason.NODE_QUOTA: 4_900}
    rig.send(["fake-0"])  # a node already tracked is still heard
    assert rig.ingest.applied == 101
    assert [e.reason for e in rig.events()] == [RefusalReason.NODE_QUOTA]


def test_heartbeats_beyond_the_clusters_rate_are_refused_and_the_bucket_refills_with_time() -> None:
    # 64 nodes' worth at least: 64 x 3 per 10 s interval = 19.2/s, holding two intervals (384).
    rig = Rig(Quota(max_nodes=5000, interval_s=10.0, headroom=3.0), inventory=["n0"])
    rig.send(["n0"] * 1000)
    assert rig.ingest.applied == 384
    assert rig.ingest.dropped == {RefusalReason.RATE_LIMITED: 616}
    rig.clock[0] = 5.0  # 5 s later: 96 more tokens
    rig.send(["n0"] * 200)
    assert rig.ingest.applied == 384 + 96
    assert [e.reason for e in rig.events()] == [RefusalReason.RATE_LIMITED]


def test_a_fleet_on_time_is_never_rate_limited() -> None:
    """Every node once per interval for many intervals, plus one restart burst: nothing refused."""
    nodes = [f"n{i}" for i in range(500)]
    rig = Rig(Quota(interval_s=10.0), inventory=nodes)
    rig.send(nodes)  # agents restarted together: an extra beat from each
    for round_ in range(30):
        rig.clock[0] = round_ * 10.0
        rig.send(nodes)
    assert rig.ingest.dropped == {}
    assert rig.ingest.applied == 31 * 500


def test_a_body_that_speaks_for_another_node_is_refused_as_a_mismatch() -> None:
    rig = Rig(Quota(), inventory=["n0", "n1"])
    rig.send(["n0"], body_node="n1")
    assert rig.ingest.applied == 0
    assert rig.ledger.totals[RefusalReason.SUBJECT_BODY_MISMATCH] == 1
    [event] = rig.events()
    assert (event.reason, event.node, event.subject) == (
        RefusalReason.SUBJECT_BODY_MISMATCH,
        "n0",
        "fleet.v1.hb.c1.n0",
    )
    assert "c1/n1" in event.detail


class _Tx:
    """Records what a membership handler writes and emits (the store is not the subject here)."""

    def __init__(self) -> None:
        self.rows: list[tuple[object, ...]] = []
        self.emitted: list[tuple[str, object]] = []

    async def execute(self, _sql: str, params: tuple[object, ...] = ()) -> None:
        self.rows.append(params)

    async def emit(self, subject: str, event: object) -> None:
        self.emitted.append((subject, event))


async def test_an_inventory_past_the_node_quota_is_not_tracked_nor_stored() -> None:
    model = HealthModel(POLICY, started=0.0)
    ledger = RefusalLedger("heartbeat", Registry())
    members = Membership(model, (0,), 1, lambda: 0.0, quota=Quota(max_nodes=3), ledger=ledger)
    members.apply_state("c1", ClusterState.APPROVED)
    tx = _Tx()
    for i in range(10):
        node = NodeFacts(node_id=f"n{i}", node_name=f"n{i}", role=NodeRole.WORKER, kubelet_version="v1.30.4")
        added = NodeAdded(cluster_id="c1", node=node, occurred_at=datetime.now(UTC))
        await members.on_node_added(added, tx, None)  # type: ignore[arg-type]
    assert sorted(model.clusters["c1"].nodes) == ["n0", "n1", "n2"]
    assert len(tx.rows) == 3
    assert [(s, e.reason) for s, e in tx.emitted] == [  # type: ignore[attr-defined]
        ("fleet.v1.evt.security.heartbeat.c1.refused", RefusalReason.NODE_QUOTA)
    ]
    assert ledger.totals[RefusalReason.NODE_QUOTA] == 7
