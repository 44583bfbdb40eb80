"""`flotilla upgrade`: plan, start, watch and steer Kubernetes upgrade rollouts (the upgrade-orchestrator)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from flotilla_client.cli import completion
from flotilla_client.cli.cluster_refs import resolve_cluster, resolve_optional
from flotilla_client.cli.common import BadUsage, CliContext, Failure, call, echo, run, server_option
from flotilla_client.cli.output import Column, Listing, output_option, render_json, render_yaml, show_list
from flotilla_client.cli.rollout_spec import spec_from, spec_options
from flotilla_client.cli.rollout_view import FINISHED, changes, final_summary, next_steps, plan_text, status_text
from flotilla_client.cli.watching import FALLBACK_S, entity_subjects, follow, watch_list, watch_option
from flotilla_contracts.ids import InvalidIdError
from flotilla_contracts.subjects import Entity, Service
from flotilla_contracts.v1 import upgrade as up
from flotilla_contracts.v1 import upgrade_status as st

if TYPE_CHECKING:
    from flotilla_client.client import FlotillaClient

pass_cli = click.make_pass_decorator(CliContext)
UPG = Service.UPGRADE_ORCHESTRATOR
F = TypeVar("F", bound=Callable[..., Any])


@click.group()
def upgrade() -> None:
    """Upgrade Kubernetes across the fleet: plan (dry run), start, watch, pause, resume, abort, roll back."""


@upgrade.command("plan")
@spec_options
@output_option()
@server_option
@pass_cli
def plan(obj: CliContext, /, output: str, **params: Any) -> None:
    """Show what a rollout would do, and refuse what it must not; nothing moves.

    \b
    Examples:
      flotilla upgrade plan --to v1.30.4 -l env=prod --canary 1 --waves 50,100
      flotilla upgrade plan -f rollout.yaml          # the same fields, kept in a file (docs/cli.md)
    """
    reply = call(obj, UPG, "upgrade.plan", up.PlanRequest(spec=spec_from(params)), up.PlanReply, timeout_s=30)
    names = [f"cluster/{c.cluster_id}" for wave in reply.plan.waves for c in wave.clusters]  # what would move
    _print(reply.plan, output, plan_text, names)
    if not reply.plan.feasible:
        raise SystemExit(1)


@upgrade.command("start")
@spec_options
@click.option("-w", "--watch", "watch_after", is_flag=True, help="Then watch it until it finishes.")
@server_option
@pass_cli
def start(obj: CliContext, /, watch_after: bool, **params: Any) -> None:
    """Start a rollout; the plan is pinned (a retry later uses the same target).

    \b
    Examples:
      flotilla upgrade start --to v1.30.4 --canary 1 --waves 50,100 --max-unavailable 1 --watch
      flotilla upgrade status r-4f2a9c1e7b3d -o yaml > rollout.yaml   # an earlier rollout's spec, to edit
      flotilla upgrade start -f rollout.yaml
    """
    request = up.StartRolloutRequest(request_id=uuid.uuid4().hex, spec=spec_from(params))
    if watch_after:  # one command, one trace: the start and the watch that follows it
        raise SystemExit(run(lambda: _start_and_follow(obj, request)))
    reply = call(obj, UPG, "upgrade.start", request, up.StartRolloutReply, timeout_s=30)
    _started(reply)
    echo(f"watch it with `{obj.hint('upgrade watch ' + reply.rollout_id)}`")


def _started(reply: up.StartRolloutReply) -> None:
    echo(
        f"rollout {reply.rollout_id} started: {reply.plan.clusters_total} clusters, {reply.plan.nodes_total} nodes "
        f"in {len(reply.plan.waves)} waves"
    )


async def _start_and_follow(obj: CliContext, request: up.StartRolloutRequest) -> int:
    from flotilla_client.client import FlotillaClient

    async with FlotillaClient(obj.server_url()) as client:
        reply = await client.request(UPG, "upgrade.start", request, up.StartRolloutReply, timeout=30)
        _started(reply)
        return await follow_rollout(client, reply.rollout_id)


def _control(verb: str, message: Any, done: str) -> Callable[[CliContext], None]:
    def run_it(obj: CliContext) -> None:
        reply = call(obj, UPG, f"upgrade.{verb}", message, st.RolloutReply)
        echo(
            f"rollout {reply.rollout.rollout_id} {done}: now {reply.rollout.state.value}"
            + (f" ({reply.message})" if reply.message else "")
        )

    return run_it


@upgrade.command("pause")
@click.argument("rollout_id", shell_complete=completion.rollouts)
@click.option("--reason", default="", help="Shown in status and events.")
@server_option
@pass_cli
def pause(obj: CliContext, rollout_id: str, reason: str) -> None:
    """Start no new disruption; steps already running finish.

    \b
    Example:
      flotilla upgrade pause r-4f2a9c1e7b3d --reason "checking a dashboard"
    """
    _control("pause", up.PauseRolloutRequest(rollout_id=rollout_id, reason=reason), "paused")(obj)


@upgrade.command("resume")
@click.argument("rollout_id", shell_complete=completion.rollouts)
@server_option
@pass_cli
def resume(obj: CliContext, rollout_id: str) -> None:
    """Resume a paused or frozen rollout (a freeze's cause should be fixed first).

    Exits 1 when the rollout froze again at once (its freeze is printed): the cause is still there.

    \b
    Example:
      flotilla upgrade resume r-4f2a9c1e7b3d
    """
    reply = call(obj, UPG, "upgrade.resume", up.ResumeRolloutRequest(rollout_id=rollout_id), st.RolloutReply)
    freeze = reply.rollout.freeze
    if reply.rollout.state is st.RolloutState.FROZEN and freeze is not None:
        raise Failure(
            f"rollout {rollout_id} froze again at once ({freeze.reason.value}): {freeze.message}; "
            + next_steps(reply.rollout, obj.hint)
        )
    echo(
        f"rollout {rollout_id} resumed: now {reply.rollout.state.value}"
        + (f" ({reply.message})" if reply.message else "")
    )


@upgrade.command("abort")
@click.argument("rollout_id", shell_complete=completion.rollouts)
@click.option("--reason", default="")
@server_option
@pass_cli
def abort(obj: CliContext, rollout_id: str, reason: str) -> None:
    """Stop the rollout for good; nodes in the middle of a step are finished and uncordoned.

    \b
    Example:
      flotilla upgrade abort r-4f2a9c1e7b3d --reason "wrong target"
    """
    _control("abort", up.AbortRolloutRequest(rollout_id=rollout_id, reason=reason), "aborted")(obj)


@upgrade.command("approve")
@click.argument("rollout_id", shell_complete=completion.rollouts)
@click.option("--wave", type=click.IntRange(0), required=True)
@server_option
@pass_cli
def approve(obj: CliContext, rollout_id: str, wave: int) -> None:
    """Let a wave that waits for approval start.

    \b
    Example:
      flotilla upgrade approve r-4f2a9c1e7b3d --wave 1
    """
    _control("approve", up.ApproveWaveRequest(rollout_id=rollout_id, wave=wave), f"wave {wave} approved")(obj)


@upgrade.command("retry")
@click.argument("rollout_id", shell_complete=completion.rollouts)
@click.option(
    "--cluster",
    "cluster_id",
    shell_complete=completion.clusters,
    help="Only this cluster [default: every failed cluster].",
)
@server_option
@pass_cli
def retry(obj: CliContext, rollout_id: str, cluster_id: str | None) -> None:
    """Try failed clusters again, against the rollout's pinned target.

    \b
    Examples:
      flotilla upgrade retry r-4f2a9c1e7b3d
      flotilla upgrade retry r-4f2a9c1e7b3d --cluster sim-0001
    """
    request = up.RetryRequest(rollout_id=rollout_id, cluster_id=resolve_optional(obj, cluster_id))
    _control("retry", request, "retrying")(obj)


@upgrade.command("skip")
@click.argument("rollout_id", shell_complete=completion.rollouts)
@click.option("--cluster", "cluster_id", required=True, shell_complete=completion.clusters)
@click.option("--reason", default="")
@server_option
@pass_cli
def skip(obj: CliContext, rollout_id: str, cluster_id: str, reason: str) -> None:
    """Leave one cluster out of the rollout.

    \b
    Example:
      flotilla upgrade skip r-4f2a9c1e7b3d --cluster sim-0001 --reason "frozen for an audit"
    """
    cluster_id = resolve_cluster(obj, cluster_id)
    message = up.SkipClusterRequest(rollout_id=rollout_id, cluster_id=cluster_id, reason=reason)
    _control("skip", message, f"skipping {cluster_id}")(obj)


@upgrade.command("rollback")
@click.argument("rollout_id", shell_complete=completion.rollouts)
@click.option("--reason", default="")
@server_option
@pass_cli
def rollback(obj: CliContext, rollout_id: str, reason: str) -> None:
    """Return upgraded nodes to their previous version where Kubernetes allows it.

    A patch-level rollout returns every upgraded node. After a minor upgrade the control plane
    cannot be downgraded (kubeadm does not support it): the rollout stops and the workers it can
    return are returned; the reply says which.

    \b
    Example:
      flotilla upgrade rollback r-4f2a9c1e7b3d --reason "ingress errors after v1.30.4"
    """
    _control("rollback", up.RollbackRequest(rollout_id=rollout_id, reason=reason), "rolling back")(obj)


LIST_COLUMNS = (
    Column("ID", "rollout_id"),
    Column("NAME", "name"),
    Column("TARGET", "target_version"),
    Column("STATE", lambda r: r.state.value),
    Column("WAVE", lambda r: f"{r.current_wave}/{r.waves_total}" if r.current_wave is not None else "-"),
    Column("CLUSTERS", lambda r: f"{r.clusters.succeeded}/{r.clusters.total}"),
    Column("NODES", lambda r: f"{r.nodes.succeeded}/{r.nodes.total}"),
    Column("FAILED", lambda r: r.nodes.failed),
    Column("FREEZE", lambda r: r.freeze.reason.value if r.freeze else "-"),
    Column("CREATED", "created_at"),
    Column("STARTED", "started_at", wide=True),
    Column("FINISHED", "finished_at", wide=True),
    Column("CLUSTERS FAILED", lambda r: r.clusters.failed, wide=True),
    Column("SKIPPED", lambda r: r.clusters.skipped, wide=True),
    Column("FREEZE MESSAGE", lambda r: r.freeze.message if r.freeze else "-", max_width=60, wide=True),
)
ROLLOUT_LISTING = Listing("rollout", "rollouts", LIST_COLUMNS, lambda r: r.rollout_id)


@upgrade.command("list")
@output_option()
@watch_option
@server_option
@pass_cli
def list_rollouts(obj: CliContext, output: str, watch: bool) -> None:
    """List rollouts, newest first; with --watch, again whenever a rollout, wave, cluster or node of one moves.

    \b
    Examples:
      flotilla upgrade list
      flotilla upgrade list -o wide
      flotilla upgrade list -w
    """

    def fetch() -> list[st.RolloutSummary]:
        return call(obj, UPG, "upgrade.list", st.ListRolloutsRequest(), st.ListRolloutsReply).rollouts

    if watch:
        watch_list(obj, entity_subjects(ROLLOUT_ENTITIES), fetch, output, ROLLOUT_LISTING)
    else:
        show_list(fetch(), output, ROLLOUT_LISTING)


def fetch_status(obj: CliContext, rollout_id: str, nodes: bool = False) -> st.RolloutStatusReply:
    request = st.RolloutStatusRequest(rollout_id=rollout_id, include_nodes=nodes, limit=1000)
    return call(obj, UPG, "upgrade.status", request, st.RolloutStatusReply)


@upgrade.command("status")
@click.argument("rollout_id", shell_complete=completion.rollouts)
@click.option("--nodes", is_flag=True, help="A row per node: role, state, step in flight, attempt, version, failure.")
@output_option()
@server_option
@pass_cli
def status(obj: CliContext, rollout_id: str, nodes: bool, output: str) -> None:
    """Waves, clusters, failures with reasons, and the freeze reason if frozen; --nodes (and -o wide) a node table.

    \b
    Examples:
      flotilla upgrade status r-4f2a9c1e7b3d --nodes
      flotilla upgrade status r-4f2a9c1e7b3d -o wide     # the node table with wave, cordoned-by-us and update time
      flotilla upgrade status r-4f2a9c1e7b3d -o yaml
    """
    reply = fetch_status(obj, rollout_id, nodes or output == "wide")
    _print(reply, output, status_text, [f"rollout/{reply.rollout.rollout_id}"])


@upgrade.command("watch")
@click.argument("rollout_id", shell_complete=completion.rollouts)
@click.option(
    "--interval",
    default=FALLBACK_S,
    show_default=True,
    help="Seconds between looks when no event comes (every event of the rollout redraws at once).",
)
@server_option
@pass_cli
def watch(obj: CliContext, rollout_id: str, interval: float) -> None:
    """Live progress per wave and cluster, the current freeze reason, then a summary.

    Redraws when an event of the rollout arrives (once per burst of them), and every --interval seconds
    without one (a soak timer, a missed event). Exits 0 when the rollout succeeds, 1 when it ends otherwise.

    \b
    Example:
      flotilla upgrade watch r-4f2a9c1e7b3d
    """
    raise SystemExit(watch_rollout(obj, rollout_id, interval))


ROLLOUT_ENTITIES = (Entity.ROLLOUT, Entity.ROLLOUT_WAVE, Entity.ROLLOUT_CLUSTER, Entity.ROLLOUT_NODE)


def watch_rollout(
    obj: CliContext,
    rollout_id: str,
    interval: float = FALLBACK_S,
    until: Callable[[st.RolloutStatusReply], bool] | None = None,
) -> int:
    """Print progress until the rollout finishes (or `until(status)` holds); the exit code for the shell."""
    from flotilla_client.client import FlotillaClient

    _rollout_subjects(rollout_id)  # a bad id is refused before connecting

    async def go() -> int:
        async with FlotillaClient(obj.server_url()) as client:
            return await follow_rollout(client, rollout_id, interval, until)

    return run(go)


def _rollout_subjects(rollout_id: str) -> list[str]:
    try:
        return entity_subjects(ROLLOUT_ENTITIES, rollout_id)
    except InvalidIdError as exc:
        raise BadUsage(str(exc)) from None


async def follow_rollout(
    client: FlotillaClient,
    rollout_id: str,
    interval: float = FALLBACK_S,
    until: Callable[[st.RolloutStatusReply], bool] | None = None,
) -> int:
    """Draw the rollout's status now and after each burst of its events (or `interval` without one) on one
    connection, until it finishes or `until(status)` holds; the exit code for the shell."""
    subjects = _rollout_subjects(rollout_id)
    tty = sys.stdout.isatty()
    shown: list[str] = []
    code: list[int] = []

    async def look() -> bool:
        request = st.RolloutStatusRequest(rollout_id=rollout_id, include_nodes=False, limit=1000)
        current = await client.request(UPG, "upgrade.status", request, st.RolloutStatusReply)
        lines = status_text(current, active_only=not tty).splitlines()
        if tty:
            click.echo("\x1b[H\x1b[2J" + "\n".join(lines))
        else:
            for line in changes(shown, lines):
                echo(line)
        shown[:] = lines
        if current.rollout.state in FINISHED:
            echo("\n" + final_summary(current))
            code.append(0 if current.rollout.state is st.RolloutState.SUCCEEDED else 1)
        elif until is not None and until(current):
            code.append(0)
        return bool(code)

    await follow(client.nc, subjects, look, interval)
    return code[0]


def _print(value: Any, output: str, text: Callable[..., str], names: list[str]) -> None:
    """One reply in any output format; `names` are its kind/id lines for -o name."""
    if output == "json":
        echo(render_json(value))
    elif output == "yaml":
        echo(render_yaml(value))
    elif output == "name":
        echo("\n".join(names)) if names else echo("No clusters found.", err=True)
    else:
        echo(text(value, wide=output == "wide"))
