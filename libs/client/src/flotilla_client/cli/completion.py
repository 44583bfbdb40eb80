"""Shell completion of what lives on the bus: cluster ids and names, rollout ids, subscription names.

click's `shell_complete` callbacks (docs/cli.md, completion). Each asks one service once, with a short deadline
and no trace; any failure (no fleet, a refusal, a timeout) completes nothing and prints nothing: a stack trace in
the middle of a command line helps nobody.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import click
from click.shell_completion import CompletionItem

from flotilla_client.cli.common import CliContext

if TYPE_CHECKING:
    from flotilla_client.client import FlotillaClient

log = logging.getLogger(__name__)
DEADLINE_S = 1.5  # connect and ask: a shell waits for this while the user waits for the shell

Candidates = list[tuple[str, str]]  # (value, help shown by zsh and fish)


def _context(ctx: click.Context) -> CliContext:
    """The global options' context: completion parses the command line but runs no command, so build it the way
    the root command does."""
    found = ctx.find_object(CliContext)
    if found is not None:
        return found
    root = ctx.find_root()
    root.invoke(root.command.callback or (lambda **_: None), **root.params)  # sets root.obj
    found = ctx.find_object(CliContext)
    if found is None:
        raise click.UsageError("no global options")
    return found


def _ask(ctx: click.Context, question: Callable[[FlotillaClient], Awaitable[Candidates]]) -> Candidates:
    """The candidates one question to the bus gives; none on any error."""
    from flotilla_client.client import FlotillaClient

    async def go() -> Candidates:
        async with FlotillaClient(_context(ctx).server_url(), connect_timeout=DEADLINE_S) as client:
            return await asyncio.wait_for(question(client), DEADLINE_S)

    try:
        return asyncio.run(go())
    except Exception as exc:
        log.debug("no completion: %s", exc)
        return []


def _items(candidates: Candidates, incomplete: str) -> list[CompletionItem]:
    seen: set[str] = set()
    items = []
    for value, help_text in candidates:
        if value.startswith(incomplete) and value not in seen:
            seen.add(value)
            items.append(CompletionItem(value, help=help_text or None))
    return items


async def _clusters(client: FlotillaClient) -> Candidates:
    from flotilla_contracts.subjects import Service
    from flotilla_contracts.v1 import registration as reg

    reply = await client.request(
        Service.REGISTRATION, "clusters.list", reg.ListClustersRequest(limit=1000), reg.ListClustersReply, 1.0
    )
    ids = [(c.cluster_id, f"{c.identity.name} ({c.state.value})") for c in reply.clusters]
    names = [(c.identity.name, f"{c.cluster_id} ({c.state.value})") for c in reply.clusters if c.identity.name]
    return ids + names


async def _rollouts(client: FlotillaClient) -> Candidates:
    from flotilla_contracts.subjects import Service
    from flotilla_contracts.v1 import upgrade_status as st

    request = st.ListRolloutsRequest()
    reply = await client.request(Service.UPGRADE_ORCHESTRATOR, "upgrade.list", request, st.ListRolloutsReply, 1.0)
    return [(r.rollout_id, f"{r.name or r.target_version} ({r.state.value})") for r in reply.rollouts]


async def _subscriptions(client: FlotillaClient) -> Candidates:
    from flotilla_contracts.subjects import Service
    from flotilla_contracts.v1 import scheduler as sched

    request = sched.ListSubscriptionsRequest()
    reply = await client.request(Service.SCHEDULER, "subscriptions.list", request, sched.ListSubscriptionsReply, 1.0)
    return [(s.name, f"{s.clusters} clusters") for s in reply.subscriptions]


def clusters(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Cluster ids and names (registration's members)."""
    return _items(_ask(ctx, _clusters), incomplete)


def rollouts(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Rollout ids, newest first (the upgrade-orchestrator's list)."""
    return _items(_ask(ctx, _rollouts), incomplete)


def subscriptions(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Subscription names (the scheduler's list)."""
    return _items(_ask(ctx, _subscriptions), incomplete)
