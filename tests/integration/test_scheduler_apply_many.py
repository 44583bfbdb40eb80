"""`flotilla subscriptions apply -f` with many files (a folder): sent in batches (`subscriptions.batch.apply`, a
few at once) to the scheduler as its own process on a real nats-server, progress on stderr, one line per file
in the order given, a refused file named with its reason while the others (of its batch too) apply, applying
the same files again changes nothing, and `subscriptions list` reads every page."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner
from integration_support import start_service
from registration_support import wait_until_serving
from scheduler_support import approved, publish

from flotilla_client.cli import subscriptions
from flotilla_client.cli.main import cli
from flotilla_client.client import FlotillaClient
from flotilla_client.natsserver import NatsServer
from flotilla_contracts.subjects import Service
from flotilla_contracts.v1 import scheduler as sched
from flotilla_testkit import eventually

pytestmark = pytest.mark.integration
SCHED = Service.SCHEDULER
FILES = 40


def subscription_yaml(name: str, selector: str) -> str:
    return (
        f"name: {name}\npolicy: {{selector: '{selector}'}}\n"
        f"manifests:\n  - {{apiVersion: v1, kind: ConfigMap, metadata: {{name: {name}, namespace: default}}}}\n"
    )


async def test_a_folder_of_subscriptions_applies_in_batches_and_names_the_one_refused(
    nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriptions, "BATCH_BYTES", 2500)  # ~10 files a batch: several batches, a few at once
    monkeypatch.setattr(subscriptions, "LIST_PAGE", 7)  # 40 subscriptions: 6 pages
    folder = tmp_path / "workloads"
    folder.mkdir()
    for i in range(FILES):
        (folder / f"w{i:02d}.yaml").write_text(subscription_yaml(f"w{i:02d}", "env=prod"))
    (folder / "w20-bad.yaml").write_text(subscription_yaml("bad", "env in (prod"))  # refused by the service
    (folder / "notes.txt").write_text("not a subscription")  # not a .yaml file: not read
    process = start_service(SCHED, nats_server.url, tmp_path / "state")
    try:
        await wait_until_serving(nats_server.url, SCHED)
        async with FlotillaClient(nats_server.url) as client:
            for cid in ("c1", "c2"):
                await publish(client.nc.jetstream(), approved(cid, env="prod"), cluster_id=cid)
            args = ["--server", nats_server.url, "--state-dir", str(tmp_path), "subscriptions", "apply", "-f"]
            first = await asyncio.to_thread(CliRunner().invoke, cli, [*args, str(folder)])
            assert first.exit_code == 1, first.output
            names = [f"w{i:02d}" for i in range(FILES)]
            assert first.stdout.splitlines() == [f"subscription {n} created (generation 1)" for n in names]
            lines = first.stderr.strip().splitlines()
            refused = [line for line in lines if line.startswith("flotilla: error: ")]
            assert len(refused) == 1 and refused[0].startswith(
                f"flotilla: error: {folder / 'w20-bad.yaml'}: invalid_selector: "
            ), first.stderr
            progress = [line for line in lines if line not in refused]
            assert len(progress) > 2 and progress[-1] == f"applied {FILES + 1} of {FILES + 1} subscriptions", lines
            listed = await client.request(
                SCHED, "subscriptions.list", sched.ListSubscriptionsRequest(), sched.ListSubscriptionsReply
            )
            assert [s.name for s in listed.subscriptions] == names

            async def placed() -> bool:
                info = await client.request(
                    SCHED, "subscriptions.get", sched.GetSubscriptionRequest(name="w39"), sched.GetSubscriptionReply
                )
                return [p.cluster_id for p in info.subscription.placements] == ["c1", "c2"]

            await eventually(placed, "w39 placed on both clusters", timeout_s=15, until=bool)
            listing = await asyncio.to_thread(CliRunner().invoke, cli, [*args[:-2], "list", "-o", "name"])
            assert listing.exit_code == 0, listing.output
            assert listing.stdout.splitlines() == [f"subscription/{n}" for n in names]
            (folder / "w20-bad.yaml").unlink()
            again = await asyncio.to_thread(
                CliRunner().invoke, cli, [*args, str(folder / "w00.yaml"), "-f", str(folder)]
            )
            assert again.exit_code == 0, again.output
            assert again.stdout.splitlines() == [f"subscription {n} unchanged (generation 1)" for n in ["w00", *names]]
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 30)
