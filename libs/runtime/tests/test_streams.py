"""The event streams on a real nats-server: members' reports in the bounded FLEET_REPORTS, never in FLEET_EVENTS,
and a deployment from before FLEET_REPORTS narrowed in place."""

import asyncio

import msgspec
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from flotilla_contracts.streams import FLEET_EVENTS, FLEET_REPORTS, STREAMS
from flotilla_runtime.bus import ensure_streams, stream_config
from flotilla_runtime.errors import TemporaryError

STEP = "fleet.v1.evt.node-step.c1.c1-n1.reported"
CLUSTER = "fleet.v1.evt.cluster.c1.approved"
OLD_EVENTS = msgspec.structs.replace(FLEET_EVENTS, subjects=("fleet.v1.evt.>",))  # as an older Flotilla left it


async def held(js: JetStreamContext, stream: str, subject: str) -> int:
    return sum(((await js.stream_info(stream, subjects_filter=subject)).state.subjects or {}).values())


async def test_a_flood_of_step_reports_stays_within_fleet_reports_bound(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    flood = FLEET_REPORTS.max_msgs_per_subject + 500
    acks = await asyncio.gather(*(js.publish(STEP, b'{"n":%d}' % n) for n in range(flood)))
    await js.publish(CLUSTER, b"{}")
    assert {ack.stream for ack in acks} == {FLEET_REPORTS.name}, "a member's JetStream publish is still acked"
    assert await held(js, FLEET_REPORTS.name, STEP) == FLEET_REPORTS.max_msgs_per_subject
    assert await held(js, FLEET_EVENTS.name, "fleet.v1.evt.>") == 1, "FLEET_EVENTS got none of the reports"
    newest = await js.get_last_msg(FLEET_REPORTS.name, STEP)
    assert msgspec.json.decode(newest.data) == {"n": flood - 1}, "the oldest go first"
    config = (await js.stream_info(FLEET_REPORTS.name)).config
    assert (config.max_bytes, config.max_age) == (FLEET_REPORTS.max_bytes, FLEET_REPORTS.max_age_s)


async def test_an_older_fleet_events_gives_up_the_members_subjects_and_keeps_what_it_holds(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(stream_config(OLD_EVENTS))
    await js.publish(STEP, b"{}")
    await js.publish(CLUSTER, b"{}")
    with pytest.raises(TemporaryError, match=r"refused to create stream FLEET_REPORTS.*narrows it"):
        await ensure_streams(js, specs=(FLEET_REPORTS,))  # the overlap nats-server refuses, said plainly

    await ensure_streams(js)
    await ensure_streams(js)  # idempotent
    assert (await js.stream_info(FLEET_EVENTS.name)).config.subjects == list(FLEET_EVENTS.subjects)
    assert (await js.stream_info(FLEET_REPORTS.name)).config.subjects == list(FLEET_REPORTS.subjects)
    assert await held(js, FLEET_EVENTS.name, "fleet.v1.evt.>") == 2, "stored messages stay where they are"
    assert (await js.publish(STEP, b"{}")).stream == FLEET_REPORTS.name
    assert (await js.publish(CLUSTER, b"{}")).stream == FLEET_EVENTS.name
    assert sorted(s.config.name for s in await js.streams_info()) == sorted(s.name for s in STREAMS)
