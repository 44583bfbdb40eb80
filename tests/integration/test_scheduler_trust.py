"""A member cluster speaks only for itself: on a real nats-server, an applied report published under cluster
X's subject but naming cluster V in its body leaves V's placement untouched, and the scheduler reports the
refusal once on `fleet.v1.evt.security.scheduler.X.refused`.

The bus here has no authentication; that X's grant lets it publish only under its own subject token is
proven by test_bus_isolation. What this test adds is that the scheduler believes the subject, not the body.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from integration_support import service_log, start_service
from nats.aio.client import Client
from registration_support import wait_until_serving
from scheduler_support import NOW, approved, deployment_spec, publish

from flotilla_client.client import FlotillaClient
from flotilla_client.natsserver import NatsServer
from flotilla_contracts import catalogue
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import scheduler as sched
from flotilla_contracts.v1.scheduler_events import AppliedStatusReported
from flotilla_contracts.v1.security import MemberRefused, RefusalReason
from flotilla_testkit import eventually

pytestmark = pytest.mark.integration
SCHED = Service.SCHEDULER


def report(cluster_id: str, state: sched.AppliedState, message: str) -> AppliedStatusReported:
    return AppliedStatusReported(
        command_id="c0ffee", cluster_id=cluster_id, subscription="web", generation=1, state=state,
        message=message, occurred_at=NOW,
    )  # fmt: skip


async def test_an_applied_report_from_x_naming_v_changes_nothing_and_is_reported(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    process = start_service(SCHED, nats_server.url, tmp_path)
    try:
        await wait_until_serving(nats_server.url, SCHED)
        js = nc.jetstream()
        refused_subject = catalogue.subject_for(MemberRefused, service=SCHED.value, cluster_id="x")
        refusals = await nc.subscribe(refused_subject)
        async with FlotillaClient(nats_server.url) as client:
            spec = msgspec.convert(deployment_spec("web", "env=prod"), sched.SubscriptionSpec)
            await client.request(
                SCHED, "subscriptions.apply", sched.ApplySubscriptionRequest(spec=spec), sched.ApplySubscriptionReply
            )
            for cid in ("v", "x"):
                await publish(js, approved(cid, env="prod"), cluster_id=cid)

            async def applied() -> dict[str, tuple[sched.AppliedState, str]] | None:
                info = await client.request(
                    SCHED, "subscriptions.get", sched.GetSubscriptionRequest(name="web"), sched.GetSubscriptionReply
                )
                found = {a.cluster_id: (a.state, a.message) for a in info.subscription.applied}
                return found if len(found) == 2 else None

            pending = (sched.AppliedState.PENDING, "")
            assert await eventually(applied, "web applied state on v and x", timeout_s=20) == {
                "v": pending,
                "x": pending,
            }
            # X forges V's failure on its own subject, then reports truly on itself; the consumer handles them
            # in order, so once X's own report shows, the forgery has been handled too.
            forged = report("v", sched.AppliedState.FAILED, "FORGED BY X")
            await publish(js, forged, cluster_id="x", subscription="web")
            await publish(js, report("x", sched.AppliedState.APPLIED, ""), cluster_id="x", subscription="web")

            async def x_applied() -> dict[str, tuple[sched.AppliedState, str]] | None:
                found = await applied()
                return found if found and found["x"][0] is sched.AppliedState.APPLIED else None

            assert await eventually(x_applied, "x's own report applied", timeout_s=20) == {
                "v": pending,
                "x": (sched.AppliedState.APPLIED, ""),
            }
            event = msgspec.json.decode((await refusals.next_msg(timeout=20)).data, type=MemberRefused)
            assert (event.service, event.cluster_id, event.reason) == (
                "scheduler",
                "x",
                RefusalReason.SUBJECT_BODY_MISMATCH,
            )
            assert "cluster x reported for cluster v" in event.detail
    finally:
        process.terminate()
        assert process.wait(15) == 0, service_log(tmp_path, SCHED)
