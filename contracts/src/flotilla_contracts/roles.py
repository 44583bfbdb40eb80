"""People's roles on the bus (Kubernetes RBAC's view, edit and admin, for a fleet): what each may send, always in
their own name (`<command>.by.<user>`, subjects.command_by), and what they may read.

The nats-server configuration of `flotilla up` (flotilla_client.users) and of the production overlay (`flotilla
bus-config nats-auth --people`) both build a person's permissions from `role_grant`.
"""

from __future__ import annotations

from enum import StrEnum

from flotilla_contracts import subjects
from flotilla_contracts.ids import check_token
from flotilla_contracts.permissions import Grant, inbox_prefix
from flotilla_contracts.streams import FLEET_EVENTS, FLEET_REPORTS
from flotilla_contracts.subjects import Service


class Role(StrEnum):
    """What a person's bus user may do (Kubernetes RBAC's view, edit and admin, for a fleet)."""

    VIEWER = "viewer"  # read anything: list, get, status, health, plan; events read-only; service discovery
    OPERATOR = "operator"  # a viewer who may also steer running rollouts (OPERATOR_COMMANDS)
    ADMIN = "admin"  # everything: tokens, approval and deregistration of clusters, rollout start, ...


# Every command a viewer may send: they read a service's state and change nothing (`upgrade.plan` computes
# a plan and stores none). tokens.list is not among them: join tokens are an admin's.
VIEWER_COMMANDS: tuple[tuple[Service, str], ...] = (
    (Service.REGISTRATION, "clusters.list"),
    (Service.REGISTRATION, "clusters.get"),
    (Service.REGISTRATION, "nodes.list"),
    (Service.HEARTBEAT, "health.summary"),
    (Service.HEARTBEAT, "health.clusters"),
    (Service.HEARTBEAT, "health.nodes"),
    (Service.SCHEDULER, "subscriptions.list"),
    (Service.SCHEDULER, "subscriptions.get"),
    (Service.SCHEDULER, "subscriptions.rendered"),
    (Service.UPGRADE_ORCHESTRATOR, "upgrade.plan"),
    (Service.UPGRADE_ORCHESTRATOR, "upgrade.list"),
    (Service.UPGRADE_ORCHESTRATOR, "upgrade.status"),
)
# What an operator may send besides: steer a running rollout, never start one or roll it back.
_STEER = ("pause", "resume", "approve", "retry", "skip", "abort")
OPERATOR_COMMANDS = tuple((Service.UPGRADE_ORCHESTRATOR, f"upgrade.{v}") for v in _STEER)
# What only an admin sends: join tokens, the clusters' lifecycle, placements, starting and rolling back rollouts.
ADMIN_COMMANDS: tuple[tuple[Service, str], ...] = (
    (Service.REGISTRATION, "tokens.create"),
    (Service.REGISTRATION, "tokens.list"),
    (Service.REGISTRATION, "tokens.revoke"),
    (Service.REGISTRATION, "clusters.approve"),
    (Service.REGISTRATION, "clusters.reject"),
    (Service.REGISTRATION, "clusters.label"),
    (Service.REGISTRATION, "clusters.taint"),
    (Service.REGISTRATION, "clusters.deregister"),
    (Service.REGISTRATION, "clusters.hostkeys.set"),
    (Service.SCHEDULER, "subscriptions.apply"),
    (Service.SCHEDULER, "subscriptions.batch.apply"),
    (Service.SCHEDULER, "subscriptions.delete"),
    (Service.UPGRADE_ORCHESTRATOR, "upgrade.start"),
    (Service.UPGRADE_ORCHESTRATOR, "upgrade.rollback"),
)
# The event streams a viewer reads, through ephemeral ordered consumers only.
VIEWER_STREAMS: tuple[str, ...] = (FLEET_EVENTS.name, FLEET_REPORTS.name)


def _read_streams(streams: tuple[str, ...]) -> tuple[str, ...]:
    """Read a stream with an ephemeral ordered consumer (create it, its info, flow control), get a message by
    sequence or subject. No stream or consumer deletion, no durable consumer (`DURABLE.CREATE`), no ack."""
    api = "$JS.API"
    allowed = [f"{api}.INFO"]
    for stream in streams:
        allowed += [
            f"{api}.STREAM.INFO.{stream}",
            f"{api}.STREAM.MSG.GET.{stream}",
            f"{api}.DIRECT.GET.{stream}",
            f"{api}.DIRECT.GET.{stream}.>",
            f"{api}.CONSUMER.CREATE.{stream}",
            f"{api}.CONSUMER.CREATE.{stream}.>",
            f"{api}.CONSUMER.INFO.{stream}.>",
            f"$JS.FC.{stream}.>",
        ]
    return tuple(allowed)


ROLE_COMMANDS: dict[Role, tuple[tuple[Service, str], ...]] = {
    Role.VIEWER: VIEWER_COMMANDS,
    Role.OPERATOR: VIEWER_COMMANDS + OPERATOR_COMMANDS,
    Role.ADMIN: VIEWER_COMMANDS + OPERATOR_COMMANDS + ADMIN_COMMANDS,
}


def role_grant(role: Role, user: str) -> Grant:
    """A person's bus user `user` with `role`: the requests it may send, answers in its own inbox only.

    Every command only in the person's own form (`<command>.by.<user>`, subjects.command_by): the subject the
    bus let them publish on names them, so the events their command causes carry `actor: <user>` and nobody
    can act in another's name. A named admin may send every person's command but is no bus superuser (that
    is the built-in `admin`, whose commands are the plain form and name `admin`)."""
    check_token("user", user)
    commands = ROLE_COMMANDS[role]
    publish = [f"{subjects.CMD_PREFIX}.*.info", *(subjects.command_by(s, verb, user) for s, verb in commands)]
    publish += [*subjects.SRV_VERBS, *(f"{verb}.>" for verb in subjects.SRV_VERBS)]  # service discovery
    publish += _read_streams(VIEWER_STREAMS)
    return Grant(publish=tuple(publish), subscribe=(f"{inbox_prefix(user)}.>",), responses=False)
