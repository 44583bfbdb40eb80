"""The refusal ledger: every refusal counted, one event per cluster, reason and window, bounded memory."""

from __future__ import annotations

from flotilla_contracts.v1.security import RefusalReason
from flotilla_runtime.metrics import Registry
from flotilla_runtime.trust import RefusalLedger


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_flood_makes_one_event_per_window_and_the_next_carries_the_count() -> None:
    clock, metrics = Clock(), Registry()
    ledger = RefusalLedger("heartbeat", metrics, window_s=60, clock=clock)
    first = ledger.refuse("x", RefusalReason.UNKNOWN_NODE, node="n1", subject="fleet.v1.hb.x.n1")
    assert first is not None and first.refused == 1 and first.cluster_id == "x"
    assert [ledger.refuse("x", RefusalReason.UNKNOWN_NODE, node=f"n{i}") for i in range(999)] == [None] * 999
    other = ledger.refuse("x", RefusalReason.RATE_LIMITED)
    assert other is not None, "another reason has its own window"
    clock.now += 61
    later = ledger.refuse("x", RefusalReason.UNKNOWN_NODE)
    assert later is not None and later.refused == 1000, "the 999 counted ones are reported with the next event"
    assert ledger.totals[RefusalReason.UNKNOWN_NODE] == 1001
    assert 'flotilla_member_refused_total{reason="unknown_node"} 1001' in await metrics.render()
    assert ledger.subject_for(later) == "fleet.v1.evt.security.heartbeat.x.refused"


def test_senders_are_remembered_up_to_a_bound() -> None:
    ledger = RefusalLedger("scheduler", window_s=60, max_senders=3, clock=Clock())
    events = [ledger.refuse(f"c{i}", RefusalReason.SUBJECT_BODY_MISMATCH) for i in range(10)]
    assert all(e is not None for e in events)
    assert ledger.refuse("c9", RefusalReason.SUBJECT_BODY_MISMATCH) is None, "a recent sender is remembered"
    assert ledger.refuse("c0", RefusalReason.SUBJECT_BODY_MISMATCH) is not None, "the oldest was forgotten"
