"""`flotilla subscriptions`: workloads placed on clusters by the scheduler: apply, list, get, delete.

A subscription file is YAML, like kubectl's: the first document holds the subscription (`name`,
`description`, `manifests`, `policy`, `overrides`, field names as in the contracts); any further
documents (after `---`) are Kubernetes manifests added to `manifests`. `apply` takes several files (or
folders of them) and sends them concurrently, a bounded number at a time.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
import msgspec
import yaml

from flotilla_client.cli import completion
from flotilla_client.cli.cluster_refs import resolve_cluster
from flotilla_client.cli.common import CliContext, Failure, call, echo, explain_refusal, run, server_option
from flotilla_client.cli.output import Column, Listing, output_option, render, render_json, render_yaml, show_list
from flotilla_client.cli.watching import entity_subjects, watch_list, watch_option
from flotilla_client.errors import ClientError, FlotillaClientError
from flotilla_contracts.subjects import Entity, Service
from flotilla_contracts.v1 import scheduler as sched

pass_cli = click.make_pass_decorator(CliContext)
SCHED = Service.SCHEDULER


def load_spec(text: str, source: str) -> sched.SubscriptionSpec:
    """The subscription in a YAML text; Failure naming the file, the line or the field otherwise."""
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise Failure(f"{source}: invalid YAML{where}: {problem}") from None
    if not documents:
        raise Failure(f"{source}: no subscription in the file")
    head = documents[0]
    if not isinstance(head, dict):
        raise Failure(f"{source}: the first document must be a mapping (name, manifests, policy, overrides)")
    extra = documents[1:]
    for i, doc in enumerate(extra, start=2):
        if not isinstance(doc, dict):
            raise Failure(f"{source}: document {i} is not a Kubernetes object (a mapping)")
    body = {**head, "manifests": [*(head.get("manifests") or []), *extra]}
    try:
        return msgspec.convert(body, sched.SubscriptionSpec, str_keys=True)
    except msgspec.ValidationError as exc:
        raise Failure(f"{source}: invalid_field: {exc}") from None


SUMMARY_COLUMNS = (
    Column("NAME", "name"),
    Column("GENERATION", "generation"),
    Column("STRATEGY", lambda s: s.strategy.value),
    Column("CLUSTERS", "clusters"),
    Column("APPLIED", "applied"),
    Column("FAILED", "failed"),
    Column("UPDATED", "updated_at"),
    Column("PENDING", lambda s: s.clusters - s.applied - s.failed, wide=True),
)
SUBSCRIPTION_LISTING = Listing("subscription", "subscriptions", SUMMARY_COLUMNS, lambda s: s.name)


def placement_rows(info: sched.SubscriptionInfo) -> list[dict[str, Any]]:
    """One row per cluster that is placed or has a status: placement and applied state side by side."""
    applied = {a.cluster_id: a for a in info.applied}
    placed = {p.cluster_id: p for p in info.placements}
    rows = []
    for cluster_id in sorted(set(applied) | set(placed)):
        placement, status = placed.get(cluster_id), applied.get(cluster_id)
        rows.append(
            {
                "cluster": cluster_id,
                "placed": placement is not None,
                "replicas": placement.replicas if placement else None,
                "since": placement.since if placement else None,
                "state": status.state.value if status else "-",
                "generation": status.generation if status else None,
                "message": status.message if status else "",
            }
        )
    return rows


PLACEMENT_COLUMNS = (
    Column("CLUSTER", "cluster"),
    Column("PLACED", "placed"),
    Column("REPLICAS", "replicas"),
    Column("STATE", "state"),
    Column("GENERATION", "generation"),
    Column("SINCE", "since"),
    Column("MESSAGE", "message", max_width=48),
)


@click.group()
def subscriptions() -> None:
    """Subscriptions: Kubernetes manifests placed on clusters by selector, taints, weights and spread."""


# `apply` sends its files in batches (`subscriptions.batch.apply`): at most MAX_APPLY_BATCH specs and about
# BATCH_BYTES of JSON each (the service refuses a request over its message limit, 256 KiB by default), a few
# batches in flight so the scheduler's group commit stays full while the client encodes the next.
BATCH_BYTES = 224 * 1024
BATCHES_IN_FLIGHT = 4
_encode = msgspec.json.Encoder()
# Subscriptions per `subscriptions.list` page: ~150 bytes each, so a page stays far below NATS's 1 MiB payload
# limit (10,000 in one reply did not fit).
LIST_PAGE = 1000


def subscription_files(paths: tuple[Path, ...]) -> list[Path]:
    """The files named, a folder standing for its *.yaml and *.yml files (sorted); '-' is stdin, alone."""
    found: list[Path] = []
    for path in paths:
        if str(path) == "-":
            if len(paths) > 1:
                raise Failure("-f - (stdin) cannot be combined with other files")
            found.append(path)
        elif path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if not inside:
                raise Failure(f"{path}: no .yaml or .yml files in the folder")
            found += inside
        else:
            found.append(path)
    return found


def read_specs(paths: list[Path]) -> list[tuple[str, sched.SubscriptionSpec]]:
    """Every file read and checked before anything is sent: a bad file stops the command with its name."""
    specs = []
    for path in paths:
        source = "stdin" if str(path) == "-" else str(path)
        try:
            text = sys.stdin.read() if source == "stdin" else path.read_text(encoding="utf-8")
        except OSError as exc:
            raise Failure(f"cannot read {source}: {exc.strerror or exc}") from None
        specs.append((source, load_spec(text, source)))
    return specs


def batches(specs: list[sched.SubscriptionSpec]) -> list[list[sched.SubscriptionSpec]]:
    """The specs in order, cut into requests of at most MAX_APPLY_BATCH specs and about BATCH_BYTES (a spec
    bigger than that goes alone, and the service says whether it is too large)."""
    found: list[list[sched.SubscriptionSpec]] = [[]]
    size = 0
    for spec in specs:
        spec_size = len(_encode.encode(spec)) + 1
        if found[-1] and (len(found[-1]) >= sched.MAX_APPLY_BATCH or size + spec_size > BATCH_BYTES):
            found.append([])
            size = 0
        found[-1].append(spec)
        size += spec_size
    return [batch for batch in found if batch]


Applied = sched.ApplyResult | FlotillaClientError


async def apply_all(obj: CliContext, specs: list[sched.SubscriptionSpec]) -> list[Applied]:
    """One result (or the error of its batch's request) per spec, in order; BATCHES_IN_FLIGHT requests at a time
    on one connection, progress on stderr when there is more than one batch."""
    from flotilla_client.client import FlotillaClient

    gate = asyncio.Semaphore(BATCHES_IN_FLIGHT)
    parts = batches(specs)
    done = 0
    async with FlotillaClient(obj.server_url()) as client:

        async def one(batch: list[sched.SubscriptionSpec]) -> list[Applied]:
            nonlocal done
            async with gate:
                try:
                    results: list[Applied] = list(await client.apply_subscriptions(batch))
                except FlotillaClientError as exc:
                    results = [exc] * len(batch)
            done += len(batch)
            if len(parts) > 1:
                echo(f"applied {done:,} of {len(specs):,} subscriptions", err=True)
            return results

        answered = await asyncio.gather(*(one(batch) for batch in parts))
    return [result for results in answered for result in results]


@subscriptions.command("apply")
@click.option(
    "-f",
    "--filename",
    "paths",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path),
    help="Subscription YAML file, or a folder of them ('-' for stdin); repeat for more.",
)
@server_option
@pass_cli
@click.pass_context
def subscriptions_apply(ctx: click.Context, obj: CliContext, paths: tuple[Path, ...]) -> None:
    """Create or update subscriptions from YAML files (like `kubectl apply -f`).

    Every file is read and checked first; then they are sent in batches of up to 500 (a few at once, progress
    on stderr when there is more than one batch) and each gets one line, in the order given. A refused one is
    named on stderr with its file and the exit code is 1; the others still apply.

    \b
    Example file:
      name: web
      manifests:
        - {apiVersion: apps/v1, kind: Deployment, metadata: {name: web}, spec: {...}}
      policy: {selector: "env=prod", strategy: Divide, replicas: 6, max_clusters: 3}

    \b
    Examples:
      flotilla subscriptions apply -f docs/examples/workload.yaml
      flotilla subscriptions apply -f web.yaml -f db.yaml
      flotilla subscriptions apply -f workloads/          # every *.yaml and *.yml in it
      cat web.yaml | flotilla subscriptions apply -f -
    """
    specs = read_specs(subscription_files(paths))
    replies = run(lambda: apply_all(obj, [spec for _, spec in specs]))
    if len(replies) == 1 and isinstance(replies[0], FlotillaClientError):
        raise replies[0]  # one file whose request failed: the error as every command says it
    refused = 0
    for (source, _), reply in zip(specs, replies, strict=True):
        if isinstance(reply, sched.ApplyResult) and reply.error is not None:  # this document refused, not the rest
            reply = ClientError(reply.error.code, reply.error.message, dict(reply.error.details))
        if isinstance(reply, FlotillaClientError):
            refused += 1
            echo(f"flotilla: error: {source}: {explain_refusal(ctx, reply)}", err=True)
            continue
        verb = "configured" if reply.outcome is sched.ApplyOutcome.APPLIED else "unchanged"
        echo(f"subscription {reply.name} {'created' if reply.created else verb} (generation {reply.generation})")
    if refused:
        raise SystemExit(1)


@subscriptions.command("list")
@output_option()
@watch_option
@server_option
@pass_cli
def subscriptions_list(obj: CliContext, output: str, watch: bool) -> None:
    """List subscriptions with how many clusters have them and how many applied them.

    With --watch the list is printed again whenever a subscription, a placement or an applied status changes.

    \b
    Examples:
      flotilla subscriptions list
      flotilla subscriptions list -o name
      flotilla subscriptions list -w
    """

    def fetch() -> list[sched.SubscriptionSummary]:
        """Every page of `subscriptions.list`."""
        found: list[sched.SubscriptionSummary] = []
        cursor = ""
        while True:
            request = sched.ListSubscriptionsRequest(limit=LIST_PAGE, cursor=cursor)
            page = call(obj, SCHED, "subscriptions.list", request, sched.ListSubscriptionsReply)
            found += page.subscriptions
            if not page.next_cursor:
                return found
            cursor = page.next_cursor

    if watch:
        subjects = entity_subjects((Entity.SUBSCRIPTION, Entity.PLACEMENT, Entity.APPLIED))
        watch_list(obj, subjects, fetch, output, SUBSCRIPTION_LISTING)
    else:
        show_list(fetch(), output, SUBSCRIPTION_LISTING)


@subscriptions.command("get")
@click.argument("name", shell_complete=completion.subscriptions)
@click.option(
    "--cluster",
    "cluster_id",
    metavar="CLUSTER",
    shell_complete=completion.clusters,
    help="Show the manifests as rendered for this cluster.",
)
@output_option()
@server_option
@pass_cli
def subscriptions_get(obj: CliContext, name: str, cluster_id: str | None, output: str) -> None:
    """A subscription's placements and per-cluster applied status, or (--cluster) its rendered manifests.

    \b
    Examples:
      flotilla subscriptions get web
      flotilla subscriptions get web --cluster sim-0001-1a2b3c -o yaml
    """
    if cluster_id:
        cluster_id = resolve_cluster(obj, cluster_id)
        request = sched.GetRenderedRequest(name=name, cluster_id=cluster_id)
        rendered = call(obj, SCHED, "subscriptions.rendered", request, sched.GetRenderedReply)
        if output in ("json", "yaml", "name"):
            _print_one(rendered, output, f"subscription/{rendered.name}")
            return
        placed = f"placed, {rendered.replicas} replicas" if rendered.replicas is not None else "placed"
        overrides = ", ".join(rendered.overrides_applied) or "none"
        echo(
            f"# {name} on {cluster_id}: {placed if rendered.placed else 'not placed'}; "
            f"generation {rendered.generation}; overrides: {overrides}"
        )
        echo(yaml.safe_dump_all(rendered.manifests, sort_keys=False).rstrip("\n"))
        return
    reply = call(obj, SCHED, "subscriptions.get", sched.GetSubscriptionRequest(name=name), sched.GetSubscriptionReply)
    info = reply.subscription
    if output in ("json", "yaml", "name"):
        _print_one(info, output, f"subscription/{info.spec.name}")
        return
    policy = info.spec.policy
    echo(f"Name:        {info.spec.name} (generation {info.generation})")
    echo(
        f"Strategy:    {policy.strategy.value}"
        + (f", {policy.replicas} replicas" if policy.strategy is sched.Strategy.DIVIDE else "")
    )
    echo(f"Selector:    {policy.selector or '(every cluster)'}")
    if output == "wide":
        echo(f"Description: {info.spec.description or '-'}")
        echo(f"Manifests:   {len(info.spec.manifests)}; overrides: {len(info.spec.overrides)}")
    if info.unplaced_replicas:
        echo(f"Unplaced:    {info.unplaced_replicas} replicas")
    if info.message:
        echo(f"Message:     {info.message}")
    echo()
    echo(render(placement_rows(info), output, PLACEMENT_COLUMNS))


def _print_one(value: Any, output: str, name: str) -> None:
    echo(name if output == "name" else render_json(value) if output == "json" else render_yaml(value))


@subscriptions.command("delete")
@click.argument("name", shell_complete=completion.subscriptions)
@server_option
@pass_cli
def subscriptions_delete(obj: CliContext, name: str) -> None:
    """Delete a subscription; its workloads are removed from every cluster.

    \b
    Example:
      flotilla subscriptions delete web
    """
    reply = call(
        obj, SCHED, "subscriptions.delete", sched.DeleteSubscriptionRequest(name=name), sched.DeleteSubscriptionReply
    )
    echo(f"subscription {reply.name} deleted; removing it from {reply.clusters} cluster(s)")
