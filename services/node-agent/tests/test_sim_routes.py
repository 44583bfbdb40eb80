"""The packed sim's outbox routes on a real nats-server: an event goes out on the connection allowed to send it,
and publishing many leaves no subscription behind (one JetStream context per connection, not one per event)."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js.api import StreamConfig

from flotilla_client.natsserver import NatsServer
from flotilla_node_agent.cluster_agent import ClusterHandle
from flotilla_node_agent.sim_links import FleetRoutes
from flotilla_runtime import logins


async def test_many_events_on_one_cluster_connection_leave_no_subscription_behind(nats_server: NatsServer) -> None:
    cluster_nc: Client = await logins.connect(nats_server.url)
    try:
        await cluster_nc.jetstream().add_stream(StreamConfig(name="T", subjects=["fleet.v1.evt.applied.>"]))
        handle = ClusterHandle("c1")
        handle.approve("c1", cluster_nc)
        routes = FleetRoutes([handle])
        before = len(cluster_nc._subs)  # the request inbox of add_stream
        acks = [await routes.publish_async(f"fleet.v1.evt.applied.c1.s{i}.reported", b"{}") for i in range(50)]
        for ack in acks:
            assert (await ack).stream == "T"
        assert len(cluster_nc._subs) == before + 1  # the one reply inbox of pipelined publishes, not one per event
    finally:
        await cluster_nc.close()
