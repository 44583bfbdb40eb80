"""Who may publish and subscribe what on the bus: the least-privilege policy of every NATS identity.

Three kinds of identity connect:

- a service (`registration`, `heartbeat`, ...): a static user in the nats-server configuration, allowed
  its own command subjects, the events it emits, the JetStream API of the Flotilla streams and its own
  inbox (`_INBOX.<service>.>`);
- `admin`: the operator's CLI, allowed everything;
- a cluster agent: authenticated by the registration service's auth callout with the per-cluster
  credential. User name `c.<cluster>` (or `c.<cluster>.<node>` for one node's agent). It may publish only
  its own cluster's heartbeats and node events, call the three agent-facing commands (join, nodes.report,
  heartbeat config), consume only its own nodes' durable consumers, and read only its own inbox
  (`_INBOX.c.<cluster>.>`);
- a joining agent: user `join.<nonce>` with a join token as password, allowed only the join command;
- `registration-revoker`: registration's user in the server's system account, allowed only to list
  connections and kick one, so that deregistering a cluster cuts its open connections at once.

The nats-server configuration (`flotilla up`, the Kubernetes overlays) and the auth callout both build
their permissions from this module, so the policy is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flotilla_contracts import subjects
from flotilla_contracts.ids import CLUSTER_AGENT_NODE, check_token
from flotilla_contracts.streams import FLEET_AGENT, FLEET_EVENTS, agent_consumer
from flotilla_contracts.subjects import Entity, Service

ADMIN_USER = "admin"
CLUSTER_USER_PREFIX = "c"
JOIN_USER_PREFIX = "join"
INBOX_ROOT = "_INBOX"
AUTH_CALLOUT_SUBJECT = "$SYS.REQ.USER.AUTH"
FLEET_ACCOUNT = "FLEET"
SYSTEM_ACCOUNT = "SYS"
REVOKER_USER = "registration-revoker"
SERVERS_CONNZ_SUBJECT = "$SYS.REQ.SERVER.PING.CONNZ"  # every server answers with its connections
# The KV bucket of the orchestrator's rollout leases (its `lease_bucket` setting defaults to this).
LEASE_BUCKET = "upgrade_orchestrator_leases"


@dataclass(frozen=True)
class Grant:
    """Publish and subscribe allow-lists; `responses`: may answer requests it received (allow_responses)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responses: bool = True
    notes: tuple[str, ...] = field(default=(), compare=False)


def inbox_prefix(user: str) -> str:
    """The inbox prefix a client connected as `user` must use: it may subscribe only below it."""
    return f"{INBOX_ROOT}.{user}" if user else INBOX_ROOT


def cluster_user(cluster_id: str, node: str = "") -> str:
    """`c.<cluster>` or `c.<cluster>.<node>`: the user name an agent connects with."""
    user = f"{CLUSTER_USER_PREFIX}.{check_token('cluster', cluster_id)}"
    return f"{user}.{check_token('node', node)}" if node else user


def join_user(nonce: str) -> str:
    """`join.<nonce>`: a joining agent's user name (the password is the join token)."""
    return f"{JOIN_USER_PREFIX}.{check_token('nonce', nonce)}"


def parse_agent_user(user: str) -> tuple[str, str, str] | None:
    """(kind, id, node) of an agent user name: ("cluster", cluster, node or "") or ("join", nonce, "")."""
    parts = user.split(".")
    try:
        if parts[0] == CLUSTER_USER_PREFIX and len(parts) in (2, 3):
            return (
                "cluster",
                check_token("cluster", parts[1]),
                check_token("node", parts[2]) if len(parts) == 3 else "",
            )
        if parts[0] == JOIN_USER_PREFIX and len(parts) == 2:
            return ("join", check_token("nonce", parts[1]), "")
    except ValueError:
        return None
    return None


# --- services ----------------------------------------------------------------------------------------------

_EMITS: dict[Service, tuple[Entity, ...]] = {
    Service.REGISTRATION: (Entity.TOKEN, Entity.CLUSTER, Entity.NODE, Entity.HOST_KEYS),
    Service.HEARTBEAT: (Entity.NODE_HEALTH, Entity.CLUSTER_HEALTH, Entity.HEARTBEAT_NOISE),
    Service.SCHEDULER: (Entity.SUBSCRIPTION, Entity.PLACEMENT),
    Service.UPGRADE_ORCHESTRATOR: (Entity.ROLLOUT, Entity.ROLLOUT_WAVE, Entity.ROLLOUT_CLUSTER, Entity.ROLLOUT_NODE),
    Service.NODE_AGENT: (Entity.NODE_STEP, Entity.APPLIED),
}


def _jetstream_api(consumes: tuple[str, ...]) -> tuple[str, ...]:
    """Provision the Flotilla streams (every service does it at start, idempotently) and consume the
    named ones: consumers, acks, flow control, message gets."""
    api = "$JS.API"
    allowed = [f"{api}.INFO"]
    for spec in (FLEET_EVENTS, FLEET_AGENT):
        allowed += [f"{api}.STREAM.{verb}.{spec.name}" for verb in ("INFO", "CREATE", "UPDATE")]
    for stream in consumes:
        allowed += [
            f"{api}.STREAM.INFO.{stream}",  # the KV bucket's stream is provisioned by its user
            f"{api}.STREAM.CREATE.{stream}",
            f"{api}.STREAM.UPDATE.{stream}",
            f"{api}.STREAM.MSG.GET.{stream}",
            f"{api}.DIRECT.GET.{stream}",
            f"{api}.DIRECT.GET.{stream}.>",
            f"{api}.CONSUMER.*.{stream}",  # NAMES, LIST
            f"{api}.CONSUMER.*.{stream}.>",  # CREATE, INFO, DELETE
            f"{api}.CONSUMER.*.*.{stream}.>",  # DURABLE.CREATE, MSG.NEXT
            f"$JS.ACK.{stream}.>",
            f"$JS.FC.{stream}.>",
        ]
    return tuple(dict.fromkeys(allowed))


def service_grant(service: Service) -> Grant:
    """A service: its commands and `$SRV` discovery in, its events and the Flotilla streams out."""
    publish = [f"{subjects.EVT_PREFIX}.{entity.value}.>" for entity in _EMITS[service]]
    publish.append(f"{subjects.EVT_PREFIX}.{Entity.DEAD_LETTER.value}.{service.value}.>")
    publish.append(f"{subjects.EVT_PREFIX}.{Entity.SECURITY.value}.{service.value}.>")
    streams = [FLEET_EVENTS.name]
    subscribe = [
        subjects.service_commands(service),
        f"{subjects.CMD_PREFIX}.*.info",
        "$SRV.>",
        f"{inbox_prefix(service.value)}.>",
    ]
    if service is Service.REGISTRATION:
        subscribe.append(AUTH_CALLOUT_SUBJECT)
    if service is Service.HEARTBEAT:
        subscribe += [subjects.ALL_HEARTBEATS, f"{subjects.HB_PARTITION_PREFIX}.>"]
    if service is Service.SCHEDULER:
        publish.append(f"{subjects.AGENT_PREFIX}.*.{CLUSTER_AGENT_NODE}.apply")
        streams.append(FLEET_AGENT.name)
    if service is Service.UPGRADE_ORCHESTRATOR:
        publish.append(f"{subjects.AGENT_PREFIX}.*.*.step")
        streams += [FLEET_AGENT.name, f"KV_{LEASE_BUCKET}"]
        publish.append(f"$KV.{LEASE_BUCKET}.>")
    if service is Service.NODE_AGENT:
        streams.append(FLEET_AGENT.name)  # a node-agent process without a cluster credential (tests, dev)
        publish += [f"{subjects.HB_PREFIX}.*.*", subjects.command(Service.REGISTRATION, "join")]
        publish += [subjects.command(Service.REGISTRATION, "nodes.report"), _heartbeat_config()]
    publish += _jetstream_api(tuple(streams))
    return Grant(publish=tuple(publish), subscribe=tuple(subscribe))


def admin_grant() -> Grant:
    return Grant(publish=(">",), subscribe=(">",))


def kick_subject(server_id: str) -> str:
    """The system request that makes server `server_id` close one of its client connections (by cid)."""
    return f"$SYS.REQ.SERVER.{check_token('server', server_id)}.KICK"


def revoker_grant() -> Grant:
    """Registration's system-account user: list connections and kick them, nothing else."""
    return Grant(
        publish=(SERVERS_CONNZ_SUBJECT, "$SYS.REQ.SERVER.*.KICK"),
        subscribe=(f"{inbox_prefix(REVOKER_USER)}.>",),
        responses=False,
    )


def is_cluster_user_of(user: str, cluster_id: str) -> bool:
    """Whether a connection's user name speaks for `cluster_id` (`c.<cluster>` or `c.<cluster>.<node>`)."""
    own = f"{CLUSTER_USER_PREFIX}.{cluster_id}"
    return user == own or user.startswith(own + ".")


# --- agents ----------------------------------------------------------------------------------------------


def _heartbeat_config() -> str:
    return subjects.command(Service.HEARTBEAT, "config.get")


AGENT_COMMANDS: tuple[str, ...] = (
    subjects.command(Service.REGISTRATION, "join"),
    subjects.command(Service.REGISTRATION, "nodes.report"),
    subjects.command(Service.HEARTBEAT, "config.get"),
)


def agent_consumer_subjects(cluster_id: str, node: str) -> tuple[str, ...]:
    """The JetStream subjects of one node's own durable consumer on FLEET_AGENT, and nothing wider."""
    name = agent_consumer(cluster_id, node)
    api, stream = "$JS.API", FLEET_AGENT.name
    # Only the create form that names the filter in the subject (the server checks it against the
    # configuration): the legacy DURABLE.CREATE would let an agent filter its own consumer on another
    # cluster's subjects.
    return (
        f"{api}.CONSUMER.CREATE.{stream}.{name}.{subjects.agent_commands_for(cluster_id, node)}",
        f"{api}.CONSUMER.INFO.{stream}.{name}",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.{name}",
        f"$JS.ACK.{stream}.{name}.>",
    )


def cluster_grant(cluster_id: str, nodes: tuple[str, ...]) -> Grant:
    """An approved cluster's agents: their own heartbeats, node events, consumers and inbox; nothing else."""
    check_token("cluster", cluster_id)
    own = f"{cluster_id}"
    publish = [
        f"{subjects.HB_PREFIX}.{own}.*",
        f"{subjects.EVT_PREFIX}.{Entity.NODE_STEP.value}.{own}.>",
        f"{subjects.EVT_PREFIX}.{Entity.APPLIED.value}.{own}.>",
        f"{subjects.EVT_PREFIX}.{Entity.DEAD_LETTER.value}.{Service.NODE_AGENT.value}.{own}.recorded",
        f"$JS.API.DIRECT.GET.{FLEET_EVENTS.name}.{subjects.EVT_PREFIX}.{Entity.HOST_KEYS.value}.{own}.set",
        *AGENT_COMMANDS,
    ]
    for node in sorted({*nodes, CLUSTER_AGENT_NODE}):
        publish += agent_consumer_subjects(cluster_id, node)
    subscribe = [
        f"{inbox_prefix(cluster_user(cluster_id))}.>",
        f"{subjects.EVT_PREFIX}.{Entity.HOST_KEYS.value}.{own}.>",
        "$SRV.>",
        # A node-agent process logged in as its cluster serves the node-agent `info` command like any
        # service (queue group); the answer describes that process only.
        subjects.command(Service.NODE_AGENT, "info"),
    ]
    return Grant(publish=tuple(publish), subscribe=tuple(subscribe))


def pending_grant(cluster_id: str) -> Grant:
    """A cluster not (yet) approved: it may re-join with its credential to learn its state, nothing else."""
    return Grant(
        publish=(subjects.command(Service.REGISTRATION, "join"),),
        subscribe=(f"{inbox_prefix(cluster_user(cluster_id))}.>",),
        responses=False,
    )


def join_grant(nonce: str) -> Grant:
    """A joining agent (join token as password): the join command and its own inbox."""
    return Grant(
        publish=(subjects.command(Service.REGISTRATION, "join"),),
        subscribe=(f"{inbox_prefix(join_user(nonce))}.>",),
        responses=False,
    )
