"""Every service, as its own process: answers $SRV.PING and `info`, and survives each kind of bad input."""

from __future__ import annotations

import asyncio
import subprocess

import msgspec
import pytest
from nats.aio.client import Client

from flotilla_contracts.subjects import Service, command

pytestmark = pytest.mark.integration


async def wait_for_services(nc: Client, count: int, within_s: float = 20.0) -> list[dict[str, object]]:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish("$SRV.PING", b"", reply=inbox)
        replies = []
        try:
            while True:
                msg = await sub.next_msg(0.3)
                if msg.data:  # skip the server's "no responders" status while nothing is subscribed yet
                    replies.append(msgspec.json.decode(msg.data))
        except TimeoutError:
            pass
        await sub.unsubscribe()
        if len(replies) >= count or asyncio.get_running_loop().time() > deadline:
            return replies
        await asyncio.sleep(0.2)


BAD_INPUTS = [
    ("malformed JSON", b'{"x": ', {}, "malformed"),
    ("JSON that is not an object", b'"hello"', {}, "malformed"),
    ("another message's schema", b"{}", {"Flotilla-Schema": "registration.JoinRequest/v1"}, "wrong_schema"),
    ("an unknown schema version", b"{}", {"Flotilla-Schema": "service.InfoRequest/v2"}, "unsupported_version"),
    ("an oversized message", b'{"pad": "' + b"x" * 400_000 + b'"}', {}, "too_large"),
]


async def test_five_services_answer_discovery_and_bad_input(
    five_services: dict[Service, subprocess.Popen[bytes]], nc: Client
) -> None:
    found = await wait_for_services(nc, 5)
    assert sorted(str(reply["name"]) for reply in found) == sorted(s.value for s in Service)
    for service in Service:
        subject = command(service, "info")
        for label, body, headers, code in BAD_INPUTS:
            reply = msgspec.json.decode((await nc.request(subject, body, headers=headers, timeout=3)).data)
            assert reply["ok"] is False, f"{service}: {label}"
            assert reply["error"]["code"] == code, f"{service}: {label}"
            assert reply["error"]["message"], f"{service}: {label}"
            good = msgspec.json.decode((await nc.request(subject, b"{}", timeout=3)).data)
            assert good["ok"] is True and good["data"]["name"] == service.value, f"{service} after {label}"
    for service, proc in five_services.items():
        assert proc.poll() is None, f"{service} died"
