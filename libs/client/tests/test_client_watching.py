"""Event-driven watches (cli/watching.py): events are handed out a burst at a time, and the subjects a watch
follows; plus `kube status -o json|yaml` (the world as recorded, without a running control plane)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from flotilla_client.cli import watching
from flotilla_client.cli.main import cli
from flotilla_client.errors import ClientError
from flotilla_client.kubeworld import launch
from flotilla_contracts.ids import InvalidIdError
from flotilla_contracts.subjects import Entity


async def test_events_that_arrived_together_are_one_burst() -> None:
    bursts = watching.Bursts(quiet_s=0.05, burst_max_s=5.0)
    for _ in range(7):
        await bursts.on_message(None)  # type: ignore[arg-type]  # the message itself is not read
    assert await bursts.next(fallback_s=5.0) == 7
    assert await bursts.next(fallback_s=0.01) == 0  # nothing since: the fallback look


async def test_a_steady_stream_still_ends_a_burst_after_burst_max() -> None:
    bursts = watching.Bursts(quiet_s=1.0, burst_max_s=0.2)

    async def steady() -> None:
        while True:
            await bursts.on_message(None)  # type: ignore[arg-type]
            await asyncio.sleep(0.01)  # sleep: the pace of a steady stream (a message every 10 ms: never quiet for 1 s)

    feeder = asyncio.create_task(steady())
    try:
        assert await asyncio.wait_for(bursts.next(fallback_s=5.0), 2.0) > 1
    finally:
        feeder.cancel()


async def test_a_watch_whose_connection_closed_stops_with_a_clear_error() -> None:
    bursts = watching.Bursts()
    with pytest.raises(ClientError, match=r"connection to NATS closed.*run it again"):
        await asyncio.wait_for(bursts.next(fallback_s=None, alive=lambda: False), 5.0)


def test_watches_follow_the_entities_subjects() -> None:
    assert watching.entity_subjects((Entity.ROLLOUT, Entity.ROLLOUT_NODE), "r-1") == [
        "fleet.v1.evt.rollout.r-1.>",
        "fleet.v1.evt.rollout-node.r-1.>",
    ]
    assert watching.entity_subjects((Entity.CLUSTER,)) == ["fleet.v1.evt.cluster.>"]
    with pytest.raises(InvalidIdError):
        watching.entity_subjects((Entity.ROLLOUT,), "r.*")


def test_upgrade_watch_refuses_a_rollout_id_that_is_not_a_token() -> None:
    result = CliRunner().invoke(cli, ["--server", "nats://127.0.0.1:1", "upgrade", "watch", "r.>"])
    assert result.exit_code == 2, result.output  # refused before connecting (nothing listens on port 1)
    assert "r.>" in result.output and "cannot reach" not in result.output


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_kube_status_prints_the_recorded_world(output: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    world: dict[str, Any] = {
        "clusters": [
            {"name": "kube-1", "server": "https://127.0.0.1:6443", "admin_kubeconfig": "/k/1", "nodes": ["a", "b"]}
        ]
    }
    launch.world_dir(tmp_path).mkdir(parents=True)
    (launch.world_dir(tmp_path) / launch.WORLD_FILE).write_text(json.dumps(world))
    monkeypatch.setattr(launch, "running", lambda _state: [object()])
    result = CliRunner().invoke(cli, ["--state-dir", str(tmp_path), "kube", "status", "-o", output])
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.output) if output == "json" else yaml.safe_load(result.output)
    assert parsed == world["clusters"]
