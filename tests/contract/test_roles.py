"""People's roles on the bus: every command a person can send is placed in a role, and each role allows its own."""

from __future__ import annotations

import pytest

from flotilla_contracts import catalogue, permissions, subjects
from flotilla_contracts.catalogue import Kind
from flotilla_contracts.roles import ADMIN_COMMANDS, OPERATOR_COMMANDS, VIEWER_COMMANDS, Role, role_grant
from flotilla_contracts.streams import FLEET_AGENT, FLEET_EVENTS, subject_covers
from flotilla_contracts.subjects import Service

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
    admin = {name(s, v) for s, v in ADMIN_COMMANDS}
    groups = [viewer, operator, admin, AGENTS_ONLY]
    assert sum(len(g) for g in groups) == len(set().union(*groups)), "a command is in two groups"
    assert set().union(*groups) == every, "a new command must be given to a role (roles.VIEWER_COMMANDS, ...)"


@pytest.mark.parametrize("op", COMMANDS, ids=lambda op: op.subject)
def test_each_role_may_send_its_commands_in_its_own_name_only(op: catalogue.Operation) -> None:
    verb = op.subject.removeprefix(f"{subjects.CMD_PREFIX}.{op.owner}.")
    assert op.owner is not None
    key = (op.owner, verb)
    allowed = {Role.VIEWER: VIEWER_COMMANDS, Role.OPERATOR: VIEWER_COMMANDS + OPERATOR_COMMANDS}
    for role, user in ((Role.VIEWER, "alice"), (Role.OPERATOR, "bob"), (Role.ADMIN, "carol")):
        grant = role_grant(role, user)
        own = subjects.command_by(op.owner, verb, user)
        assert allows(grant.publish, own) == (
            key in allowed.get(role, VIEWER_COMMANDS + OPERATOR_COMMANDS + ADMIN_COMMANDS)
        )
        # never in another's name, never the plain form (whose events name the built-in admin)
        assert not allows(grant.publish, subjects.command_by(op.owner, verb, "mallory")), (role, op.subject)
        assert not allows(grant.publish, op.fill(**{p: "x" for p in op.placeholders})), (role, op.subject)


def test_the_subject_names_the_actor() -> None:
    subject = subjects.command_by(Service.UPGRADE_ORCHESTRATOR, "upgrade.pause", "alice")
    assert subject == "fleet.v1.cmd.upgrade-orchestrator.upgrade.pause.by.alice"
    assert subjects.actor_of(subject) == "alice"
    assert subjects.actor_of(subjects.command(Service.UPGRADE_ORCHESTRATOR, "upgrade.pause")) == ""
    with pytest.raises(ValueError, match="user"):
        role_grant(Role.VIEWER, "a.b")


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
