"""People's roles on the bus: every command a person can send is placed in a role, and each role allows its own."""

from __future__ import annotations

import pytest

from flotilla_contracts import catalogue, permissions, subjects
from flotilla_contracts.catalogue import Kind
from flotilla_contracts.permissions import OPERATOR_COMMANDS, VIEWER_COMMANDS, Role, role_grant
from flotilla_contracts.streams import FLEET_AGENT, FLEET_EVENTS, subject_covers
from flotilla_contracts.subjects import Service

# Commands only an admin sends (the rest are read by a viewer, steered by an operator, or sent by agents).
ADMIN_ONLY = {
    "registration.tokens.create",
    "registration.tokens.list",
    "registration.tokens.revoke",
    "registration.clusters.approve",
    "registration.clusters.reject",
    "registration.clusters.label",
    "registration.clusters.taint",
    "registration.clusters.deregister",
    "registration.clusters.hostkeys.set",
    "scheduler.subscriptions.apply",
    "scheduler.subscriptions.delete",
    "upgrade-orchestrator.upgrade.start",
    "upgrade-orchestrator.upgrade.rollback",
}
AGENTS_ONLY = {"registration.join", "registration.nodes.report", "heartbeat.config.get"}
COMMANDS = [op for op in catalogue.OPERATIONS if op.kind is Kind.COMMAND and op.owner is not None]


def allows(patterns: tuple[str, ...], subject: str) -> bool:
    return any(subject_covers(pattern, subject) for pattern in patterns)


def name(service: Service, verb: str) -> str:
    return f"{service.value}.{verb}"


def test_every_command_is_placed_in_exactly_one_role_or_left_to_admins_or_agents() -> None:
    viewer = {name(s, v) for s, v in VIEWER_COMMANDS}
    operator = {name(s, v) for s, v in OPERATOR_COMMANDS}
    every = {op.subject.removeprefix(f"{subjects.CMD_PREFIX}.") for op in COMMANDS}
    groups = [viewer, operator, ADMIN_ONLY, AGENTS_ONLY]
    assert sum(len(g) for g in groups) == len(set().union(*groups)), "a command is in two groups"
    assert set().union(*groups) == every, "a new command must be given to a role (permissions.VIEWER_COMMANDS, ...)"


@pytest.mark.parametrize("op", COMMANDS, ids=lambda op: op.subject)
def test_each_role_may_send_its_commands_and_no_other(op: catalogue.Operation) -> None:
    verb = op.subject.removeprefix(f"{subjects.CMD_PREFIX}.{op.owner}.")
    assert op.owner is not None
    key = (op.owner, verb)
    subject = op.fill(**{p: "x" for p in op.placeholders})
    assert allows(role_grant(Role.VIEWER, "alice").publish, subject) == (key in VIEWER_COMMANDS)
    assert allows(role_grant(Role.OPERATOR, "bob").publish, subject) == (key in VIEWER_COMMANDS + OPERATOR_COMMANDS)
    assert allows(role_grant(Role.ADMIN, "carol").publish, subject)


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_a_person_reads_events_but_writes_no_stream_no_event_and_answers_nothing(role: Role) -> None:
    grant = role_grant(role, "alice")
    events = FLEET_EVENTS.name
    assert allows(grant.publish, f"$JS.API.CONSUMER.CREATE.{events}.abc.fleet.v1.evt.>")
    assert allows(grant.publish, f"$JS.API.CONSUMER.INFO.{events}.abc")
    assert allows(grant.publish, subjects.SRV_PING) and allows(grant.publish, f"{subjects.SRV_STATS}.registration")
    for denied in (
        f"$JS.API.STREAM.DELETE.{events}",
        f"$JS.API.STREAM.PURGE.{events}",
        f"$JS.API.STREAM.UPDATE.{events}",
        f"$JS.API.STREAM.MSG.DELETE.{events}",
        f"$JS.API.CONSUMER.DELETE.{events}.registration-cluster",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{events}.mine",
        f"$JS.API.CONSUMER.CREATE.{FLEET_AGENT.name}.x.fleet.v1.agent.>",
        f"$JS.ACK.{events}.registration.1.1.1.1.0",
        "fleet.v1.evt.rollout.r1.started",
        "fleet.v1.hb.c1.n1",
        "fleet.v1.agent.c1.n1.step",
        f"{permissions.inbox_prefix('bob')}.x",
    ):
        assert not allows(grant.publish, denied), denied
    assert grant.subscribe == ("_INBOX.alice.>",)
    assert not grant.responses
