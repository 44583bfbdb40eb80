"""How plans and rollouts look in a terminal: plan tables, status with progress bars, the final summary."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flotilla_client.cli.output import Column, render_table
from flotilla_client.durations import format_duration
from flotilla_contracts.v1.upgrade import UpgradePlan
from flotilla_contracts.v1.upgrade_status import (
    ClusterStatus,
    Counts,
    FreezeReason,
    RolloutState,
    RolloutStatusReply,
    RolloutSummary,
)

FINISHED = frozenset(
    {RolloutState.SUCCEEDED, RolloutState.COMPLETED_WITH_FAILURES, RolloutState.ABORTED, RolloutState.ROLLED_BACK}
)


def bar(done: int, total: int, width: int = 20) -> str:
    """`[########------------]  8/20`"""
    filled = round(width * done / total) if total else width
    return f"[{'#' * filled}{'-' * (width - filled)}] {done:>3}/{total:<3}"


def plan_text(plan: UpgradePlan, wide: bool = False) -> str:
    """The plan per wave, a row per cluster (`wide`: every control-plane node in full, and the workers by name)."""
    lines = [
        f"Plan to {plan.target_version}: {plan.clusters_total} clusters, {plan.nodes_total} nodes in "
        f"{len(plan.waves)} waves, about {format_duration(plan.estimated_duration_s)}"
        + ("" if plan.feasible else "  -- NOT FEASIBLE, see refusals"),
    ]
    lines += [f"WARNING: {warning}" for warning in plan.warnings]
    for wave in plan.waves:
        gate = "  (needs approval)" if wave.requires_approval else ""
        lines.append(f"\nwave {wave.index} {wave.name}: {len(wave.clusters)} clusters{gate}")
        rows = [
            {
                "cluster": c.cluster_id,
                "from": c.from_version,
                "to": c.target_version,
                "control plane": " -> ".join(
                    f"{n.node_name}({n.kubeadm_action.value if n.kubeadm_action else '-'})" for n in c.control_plane
                ),
                "workers": ",".join(n.node_name for n in c.workers) if wide else len(c.workers),
                "checks": "ok" if all(s.ok for s in c.skew_checks) else "FAIL",
                "estimate": format_duration(c.estimated_duration_s),
            }
            for c in wave.clusters
        ]
        table = render_table(
            rows,
            [Column(h.upper(), h, max_width=60 if h == "control plane" else 0) for h in rows[0]] if rows else [],
            wide=wide,
        )
        lines.append(_indent(table))
    failed_checks = [s for w in plan.waves for c in w.clusters for s in c.skew_checks if not s.ok]
    if failed_checks:
        lines.append("\nskew checks that fail:")
        lines += [f"  {s.cluster_id} {s.node_id or ''} {s.rule.value}: {s.detail}" for s in failed_checks]
    if plan.refusals:
        lines.append("\nrefused (these will not move):")
        lines += [
            f"  {r.cluster_id or '(rollout)'}{'/' + r.node_id if r.node_id else ''}  {r.reason.value}: {r.message}"
            for r in plan.refusals
        ]
    if plan.up_to_date:
        lines.append(f"\nalready at {plan.target_version}: {', '.join(plan.up_to_date)}")
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _counts(counts: Counts) -> str:
    parts = [f"{counts.succeeded} done"]
    if counts.in_progress:
        parts.append(f"{counts.in_progress} in progress")
    if counts.failed:
        parts.append(f"{counts.failed} failed")
    if counts.skipped:
        parts.append(f"{counts.skipped} skipped")
    return ", ".join(parts)


_BUDGET_FREEZES = frozenset({FreezeReason.NODE_FAILURE_BUDGET_EXCEEDED, FreezeReason.CLUSTER_FAILURE_BUDGET_EXCEEDED})


def _flotilla(command: str) -> str:
    return f"flotilla {command}"


def next_steps(rollout: RolloutSummary, hint: Callable[[str], str] = _flotilla) -> str:
    """What a person can do about a rollout that waits on one (frozen, or finished with failures); else ""."""
    rid = rollout.rollout_id
    if rollout.state is RolloutState.COMPLETED_WITH_FAILURES:
        return (
            f"`{hint('upgrade retry ' + rid)}` tries the failed clusters again, or `{hint('upgrade rollback ' + rid)}`"
        )
    freeze = rollout.freeze
    if freeze is None:
        return ""
    if freeze.reason in _BUDGET_FREEZES:
        return (
            f"look at the failed nodes, then `{hint('upgrade retry ' + rid)}` (failed clusters again), "
            f"`{hint('upgrade skip ' + rid + ' --cluster CLUSTER')}` or `{hint('upgrade rollback ' + rid)}`"
        )
    return f"fix the cause, then `{hint('upgrade resume ' + rid)}` (or `{hint('upgrade rollback ' + rid)}`)"


def summary_line(rollout: RolloutSummary) -> str:
    wave = f"wave {rollout.current_wave}/{rollout.waves_total}" if rollout.current_wave is not None else ""
    line = (
        f"rollout {rollout.rollout_id} to {rollout.target_version}: {rollout.state.value} {wave}  "
        f"clusters {bar(rollout.clusters.succeeded, rollout.clusters.total, 10)}  "
        f"nodes {bar(rollout.nodes.succeeded, rollout.nodes.total, 20)}"
    )
    if rollout.freeze:
        line += f"\n  FROZEN ({rollout.freeze.reason.value}): {rollout.freeze.message}"
    if hint := next_steps(rollout):
        line += f"\n  next: {hint}"
    return line


def _cluster_line(cluster: ClusterStatus) -> str:
    line = f"    {cluster.cluster_id:<28} {cluster.state.value:<22} {bar(cluster.nodes_done, cluster.nodes_total, 12)}"
    if cluster.nodes_failed:
        line += f"  {cluster.nodes_failed} failed"
    if cluster.freeze:
        line += f"  frozen: {cluster.freeze.message}"
    elif cluster.failure:
        line += f"  {cluster.failure}"
    return line


def status_text(status: RolloutStatusReply, *, active_only: bool = False, wide: bool = False) -> str:
    """The rollout, each wave with its clusters' progress bars, then failures with reasons."""
    lines = [summary_line(status.rollout)]
    if status.writer is not None and status.writer.message:
        lines.append(f"  writer: {status.writer.message}")  # who writes it (I6), or that nobody does
    by_wave: dict[int, list[ClusterStatus]] = {}
    for cluster in status.clusters:
        by_wave.setdefault(cluster.wave, []).append(cluster)
    for wave in status.waves:
        extra = ""
        if wave.soak_until:
            extra = f"  soaking until {wave.soak_until:%H:%M:%S}"
        if wave.requires_approval and not wave.approved_at:
            extra += f"  waits for `flotilla upgrade approve {status.rollout.rollout_id} --wave {wave.index}`"
        lines.append(
            f"  wave {wave.index} {wave.name:<10} {wave.state.value:<22} "
            f"{bar(wave.clusters.succeeded, wave.clusters.total, 12)}{extra}"
        )
        clusters = by_wave.get(wave.index, [])
        if active_only:
            clusters = [c for c in clusters if c.state.value not in ("Pending", "Succeeded")]
        lines += [_cluster_line(c) for c in clusters]
    if status.failures:
        lines.append("  failures:")
        lines += [
            f"    {f.cluster_id}{'/' + f.node_id if f.node_id else ''} {f.step.value if f.step else ''} "
            f"{f.reason}: {f.message}"
            for f in status.failures
        ]
    return "\n".join(lines)


def final_summary(status: RolloutStatusReply) -> str:
    r = status.rollout
    took = ""
    if r.started_at and r.finished_at:
        took = f" in {format_duration((r.finished_at - r.started_at).total_seconds())}"
    lines = [
        f"Rollout {r.rollout_id} {r.state.value}{took}: target {r.target_version}",
        f"  clusters: {_counts(r.clusters)} of {r.clusters.total}",
        f"  nodes:    {_counts(r.nodes)} of {r.nodes.total}",
    ]
    if status.failures:
        lines.append(f"  failures: {len(status.failures)} (see `flotilla upgrade status {r.rollout_id}`)")
    return "\n".join(lines)


def changes(before: Iterable[str], after: Iterable[str]) -> list[str]:
    """Lines of `after` that were not in `before` (for watching without a terminal)."""
    seen = set(before)
    return [line for line in after if line not in seen]
