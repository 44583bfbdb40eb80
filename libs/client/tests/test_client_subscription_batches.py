"""`flotilla subscriptions apply` cuts its files into `subscriptions.batch.apply` requests: in order, at most
MAX_APPLY_BATCH specs and about BATCH_BYTES each, a spec bigger than that alone."""

from __future__ import annotations

import msgspec

from flotilla_client.cli.subscriptions import BATCH_BYTES, batches
from flotilla_contracts.v1 import scheduler as sched


def spec(name: str, payload: int = 10) -> sched.SubscriptionSpec:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"x": "y" * payload}}
    return sched.SubscriptionSpec(name=name, manifests=[manifest])


def test_batches_keep_the_order_and_hold_at_most_the_contract_limit() -> None:
    specs = [spec(f"s{i:04d}") for i in range(2 * sched.MAX_APPLY_BATCH + 3)]
    cut = batches(specs)
    assert [len(b) for b in cut] == [sched.MAX_APPLY_BATCH, sched.MAX_APPLY_BATCH, 3]
    assert [s for b in cut for s in b] == specs


def test_batches_stay_under_the_byte_budget_and_a_big_spec_goes_alone() -> None:
    big = spec("big", payload=BATCH_BYTES)
    specs = [spec(f"a{i}", payload=20_000) for i in range(20)] + [big] + [spec("z")]
    cut = batches(specs)
    assert [s for b in cut for s in b] == specs
    assert [big] in cut
    for batch in cut:
        if batch != [big]:
            assert sum(len(msgspec.json.encode(s)) + 1 for s in batch) <= BATCH_BYTES
    assert len(cut) >= 20 * 20_000 // BATCH_BYTES + 2
