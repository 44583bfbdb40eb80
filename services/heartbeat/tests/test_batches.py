"""HeartbeatBatch: several nodes' heartbeats in one message, each entry checked as a single heartbeat is; and the
cheap way through (flotilla_heartbeat.fastpath) for a heartbeat that only moves seq and sent_at."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import msgspec
import pytest
from nats.aio.msg import Msg

from flotilla_client.loadgen import batch_frame, template
from flotilla_contracts import subjects
from flotilla_contracts.envelope import H_SCHEMA, schema_id
from flotilla_contracts.errors import ErrorCode
from flotilla_contracts.v1.heartbeat import MAX_BATCH, Heartbeat, HeartbeatBatch, NodeHealth, NodeHealthChanged
from flotilla_contracts.v1.registration import ClusterState
from flotilla_contracts.v1.security import RefusalReason
from flotilla_heartbeat import store as tables
from flotilla_heartbeat.domain import HealthModel
from flotilla_heartbeat.fastpath import NO_KEY, body_key
from flotilla_heartbeat.health_state import Policy
from flotilla_heartbeat.ingest import Ingest
from flotilla_heartbeat.membership import Membership
from flotilla_heartbeat.noise import NoiseWindow
from flotilla_heartbeat.quota import Quota
from flotilla_heartbeat.restore import restore
from flotilla_runtime.metrics import Registry
from flotilla_runtime.migrations import load_migrations
from flotilla_runtime.store import Store
from flotilla_runtime.trust import RefusalLedger

POLICY = Policy(interval_s=10.0, missed_intervals=3, startup_grace_s=0.0)


def entry(cluster: str, node: str, *, body_cluster: str | None = None) -> bytes:
    head, middle, tail = template(body_cluster or cluster, node)
    return b"".join((head, b"1", middle, b"2023-11-14T22:13:20Z", tail))


def batch(cluster: str, entries: Iterable[bytes], *, body_cluster: str | None = None) -> bytes:
    before, after = batch_frame(body_cluster or cluster)
    return before + b",".join(entries) + after


class Rig:
    """Clusters `c1` and `c2` tracked, fed through the real ingest path on an injected clock."""

    def __init__(self, quota: Quota | None = None, *, inventory: Iterable[str] = ()) -> None:
        self.model = HealthModel(POLICY, started=0.0, wall_offset=1.7e9)
        for cluster in ("c1", "c2"):
            self.model.add_cluster(cluster)
        for node in inventory:
            self.model.add_node("c1", node, node, 0.0, listed=True)
        self.ledger = RefusalLedger("heartbeat", Registry(), clock=lambda: 0.0)
        self.ingest = Ingest(
            self.model,
            NoiseWindow(60.0),
            lambda _c: pytest.fail("no membership noise expected"),
            quota=quota or Quota(),
            ledger=self.ledger,
            max_bytes=1 << 20,
            now=lambda: (0.0, 1.7e9),
        )

    async def send(self, cluster: str, body: bytes, schema: type[msgspec.Struct] = HeartbeatBatch) -> None:
        headers = {H_SCHEMA: schema_id(schema)}  # type: ignore[arg-type]
        msg = Msg(_client=None, subject=subjects.heartbeat_batch(cluster), data=body, headers=headers)  # type: ignore[arg-type]
        await self.ingest._on_batch(msg)
        self.ingest.flush()

    def states(self, cluster: str = "c1") -> dict[str, NodeHealth | None]:
        self.model.tick(0.1, 1.7e9)
        return {node.node_id: node.state for node in self.model.clusters[cluster].nodes.values()}


async def test_a_batch_counts_as_each_of_its_nodes_heartbeats() -> None:
    rig = Rig()
    await rig.send("c1", batch("c1", (entry("c1", f"n{i}") for i in range(50))))
    transitions = rig.model.tick(0.1, 1.7e9)
    ready = [t for t in transitions if isinstance(t, NodeHealthChanged) and t.to is NodeHealth.READY]
    assert sorted(t.node_id for t in ready) == sorted(f"n{i}" for i in range(50))
    assert (rig.ingest.received, rig.ingest.applied, dict(rig.ingest.dropped)) == (50, 50, {})


async def test_an_entry_speaking_for_another_cluster_is_refused_alone_and_reported() -> None:
    rig = Rig()
    await rig.send("c1", batch("c1", [entry("c1", "n0"), entry("c1", "x", body_cluster="c2"), entry("c1", "n1")]))
    assert rig.states() == {"n0": NodeHealth.READY, "n1": NodeHealth.READY}
    assert "x" not in rig.model.clusters["c2"].nodes
    assert rig.ingest.dropped == {ErrorCode.SUBJECT_MISMATCH: 1}
    [(_, event)] = rig.ingest.take_refusals()
    assert (event.cluster_id, event.reason) == ("c1", RefusalReason.SUBJECT_BODY_MISMATCH)


async def test_a_batch_naming_another_cluster_than_its_subject_is_refused_whole() -> None:
    rig = Rig()
    await rig.send("c1", batch("c1", [entry("c2", "n0")], body_cluster="c2"))
    assert rig.model.clusters["c1"].nodes == {} and rig.model.clusters["c2"].nodes == {}
    assert rig.ingest.dropped == {ErrorCode.SUBJECT_MISMATCH: 1}
    assert [e.reason for _, e in rig.ingest.take_refusals()] == [RefusalReason.SUBJECT_BODY_MISMATCH]


async def test_a_bad_entry_is_dropped_alone() -> None:
    rig = Rig()
    bad_id = entry("c1", "n9").replace(b'"node_id":"n9"', b'"node_id":"a.b*"')
    bad_field = entry("c1", "n8").replace(b'"seq":1', b'"seq":-5')
    await rig.send("c1", batch("c1", [entry("c1", "n0"), bad_id, bad_field, b'"text"', entry("c1", "n1")]))
    assert rig.states() == {"n0": NodeHealth.READY, "n1": NodeHealth.READY}
    assert rig.ingest.dropped == {ErrorCode.INVALID_ID: 1, ErrorCode.INVALID_FIELD: 2}
    await rig.send("c1", batch("c1", [entry("c1", "n2"), b'{"half":']))  # no JSON: no entry can be told apart
    assert rig.ingest.dropped[ErrorCode.MALFORMED] == 1 and "n2" not in rig.states()


async def test_entries_pass_the_clusters_inventory_and_rate_like_single_heartbeats() -> None:
    rig = Rig(Quota(max_nodes=5000, interval_s=10.0, headroom=1.0, burst_intervals=1.0, min_nodes=1), inventory=["n0"])
    await rig.send("c1", batch("c1", [entry("c1", "n0"), entry("c1", "fake")]))
    assert rig.states() == {"n0": NodeHealth.READY}
    assert rig.ingest.dropped == {RefusalReason.UNKNOWN_NODE: 1}
    await rig.send("c1", batch("c1", [entry("c1", "n0")] * 5))  # one node's worth of tokens per interval
    assert rig.ingest.dropped[RefusalReason.RATE_LIMITED] == 5


async def test_whole_batch_refusals_oversized_too_many_wrong_schema() -> None:
    rig = Rig()
    await rig.send("c1", batch("c1", [entry("c1", "n0")] * (MAX_BATCH + 1)))
    await rig.send("c1", batch("c1", [entry("c1", "n0")]), schema=Heartbeat)
    await rig.send("c1", batch("c1", [entry("c1", "n0") + b" " * 1_100_000]))
    assert rig.model.clusters["c1"].nodes == {}
    assert rig.ingest.dropped == {ErrorCode.INVALID_FIELD: 1, ErrorCode.WRONG_SCHEMA: 1, ErrorCode.TOO_LARGE: 1}


# --- the cheap way ---


def body(node: str, seq: int, sent_at: str = "2023-11-14T22:13:20Z", *, ready: bool = True) -> bytes:
    head, middle, tail = template("c1", node, ready)
    return b"".join((head, str(seq).encode(), middle, sent_at.encode(), tail))


def test_the_key_ignores_seq_and_sent_at_and_nothing_else() -> None:
    assert body_key(body("n0", 1)) == body_key(body("n0", 99_999, "2023-11-14T22:13:21.123+00:00"))
    assert body_key(body("n0", 1)) != body_key(body("n0", 1, ready=False))
    assert body_key(body("n0", 1)) == body_key(body("n1", 1))  # the ids are checked apart: nodes share a key
    assert body_key(body("n0", 1).replace(b'"seq":', b'"sequence":')) == NO_KEY


async def test_facts_that_change_after_cheap_heartbeats_are_seen_at_once() -> None:
    rig = Rig()
    for seq in range(1, 4):  # the first is decoded in full, the next two the cheap way
        await rig.send("c1", batch("c1", [body("n0", seq), body("n1", seq)]))
        rig.model.tick(0.1, 1.7e9)
    assert rig.model.clusters["c1"].nodes["n0"].seq == 3 and rig.ingest.applied == 6 and rig.ingest.cheap == 4
    await rig.send("c1", batch("c1", [body("n0", 4, ready=False), body("n1", 4)]))
    assert rig.states() == {"n0": NodeHealth.NOT_READY, "n1": NodeHealth.READY}
    await rig.send("c1", batch("c1", [body("n0", 5), body("n1", 5)]))
    assert rig.model.clusters["c1"].nodes["n0"].ready


async def test_a_bad_seq_or_time_is_refused_on_the_cheap_way_too() -> None:
    rig = Rig()
    await rig.send("c1", batch("c1", [body("n0", 1)]))
    await rig.send("c1", batch("c1", [body("n0", 1).replace(b'"seq":1', b'"seq":-5')]))
    await rig.send("c1", batch("c1", [body("n0", 2, "yesterday")]))
    await rig.send("c1", batch("c1", [body("n0", 3, "2023-11-14T22:13:20")]))  # no offset
    assert rig.ingest.dropped == {ErrorCode.INVALID_FIELD: 3}
    assert rig.model.clusters["c1"].nodes["n0"].seq == 1


async def test_single_heartbeats_take_the_cheap_way_and_still_see_changes() -> None:
    rig = Rig()
    for seq, ready in ((1, True), (2, True), (3, False), (4, False), (5, True)):
        rig.ingest._buffer.append(single("n0", body("n0", seq, ready=ready)))
        rig.ingest.flush()
        assert rig.model.clusters["c1"].nodes["n0"].ready is ready
    assert rig.model.clusters["c1"].nodes["n0"].seq == 5 and rig.ingest.applied == 5
    assert rig.ingest.cheap == 2  # the second and the fourth: the others changed the facts


def single(node: str, data: bytes) -> Msg:
    return Msg(_client=None, subject=f"fleet.v1.hb.c1.{node}", data=data)  # type: ignore[arg-type]


async def test_a_repeated_body_speaking_for_another_node_is_still_a_mismatch() -> None:
    rig = Rig()
    for node in ("n0", "n1"):
        rig.ingest._buffer.append(single(node, body(node, 1)))
    rig.ingest.flush()
    rig.ingest._buffer.append(single("n0", body("n1", 2)))  # n1's facts are n0's: the same key, another node
    rig.ingest.flush()
    assert rig.ingest.dropped == {ErrorCode.SUBJECT_MISMATCH: 1}
    assert rig.model.clusters["c1"].nodes["n0"].seq == 1 and rig.ingest.cheap == 0


async def test_after_a_restart_restored_nodes_repeating_their_facts_take_the_cheap_way(tmp_path: Path) -> None:
    """Restored facts are shared as a heartbeat's are. (They were one object per node: after any restart no
    restored node's heartbeat passed the cheap way's identity check, and every one was decoded in full.)"""
    store = await Store.open(tmp_path / "heartbeat.db", load_migrations("flotilla_heartbeat", "heartbeat"))
    nodes = [f"n{i}" for i in range(5)]
    try:
        before = Rig()  # the replica before its restart: five nodes heard, then checkpointed
        await before.send("c1", batch("c1", (entry("c1", node) for node in nodes)))
        async with store.transaction() as tx:
            await tables.set_member(tx, "c1", ClusterState.APPROVED.value, "2023-11-14T22:13:20Z")
        await tables.checkpoint(store, before.model, [("c1", node) for node in nodes], [])

        after = Rig()  # the restarted replica, its model back from the checkpoint
        await restore(store, after.model, Membership(after.model, (0,), 1, lambda: 0.0))
        await after.send("c1", batch("c1", (entry("c1", node) for node in nodes)))

        assert (after.ingest.applied, after.ingest.cheap) == (5, 4)  # the first teaches the cache; none after it
        assert set(after.states().values()) == {NodeHealth.READY}
    finally:
        await store.close()
