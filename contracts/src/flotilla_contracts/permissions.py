"""Who may publish and subscribe what on the bus: the least-privilege policy of every NATS identity.

Three kinds of identity connect:

- a service (`registration`, `heartbeat`, ...): a static user in the nats-server configuration, allowed
  its own command subjects, the events it emits, the JetStream API of the Flotilla streams and its own
  inbox (`_INBOX.<service>.>`);
- `admin`: the operator's CLI, allowed everything (its commands name the actor `admin`);
- a person (`flotilla user add`): a static user with a `Role`'s grant (viewer, operator or admin), sending
  commands only on `<command>.by.<their name>`, so that what they cause names them;
- a cluster agent: `c.<cluster>`, authenticated by the registration service's auth callout with the
  per-cluster credential. It speaks for the cluster, not for its nodes: the agent-facing commands (join,
  nodes.report, heartbeat config), its nodes' heartbeats relayed as one HeartbeatBatch (the one place it
  vouches for nodes: their liveness, within the inventory it reported), applied reports, dead letters, the
  cluster's host keys, the `_cluster` durable consumer (it creates it) and its command subjects (their
  wake-up), and its own inbox (`_INBOX.c.<cluster>._cluster.>`: the cluster agent's inbox is not a prefix of
  its nodes' inboxes);
- a node's agent: `c.<cluster>.<node>`, with the cluster credential *and* the node's own nkey (the server's
  nonce signed; see `node_login_token` and docs/security.md). It speaks for its node only: that node's
  heartbeat and step events, dead letters of its commands, its own durable consumer (read, never created: the
  hub creates it when it has work), its command subjects (their wake-up), the host keys, the
  heartbeat config and its own inbox (`_INBOX.c.<cluster>.<node>.>`). Members answer nothing: no `$SRV`, no
  service command;
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
from flotilla_contracts.streams import FLEET_AGENT, FLEET_EVENTS, FLEET_REPORTS, STREAMS, agent_consumer
from flotilla_contracts.subjects import Entity, Service

ADMIN_USER = "admin"
CLUSTER_USER_PREFIX = "c"
JOIN_USER_PREFIX = "join"
INBOX_ROOT = "_INBOX"
AUTH_CALLOUT_SUBJECT = "$SYS.REQ.USER.AUTH"
FLEET_ACCOUNT = "FLEET"
SYSTEM_ACCOUNT = "SYS"
REVOKER_USER = "registration-revoker"
NODE_TOKEN_SEPARATOR = " "  # in a node login's token: "<user> <credential>" (neither holds a space)
# A public user nkey nobody holds the seed of: its 32 bytes are the SHA-256 of NONCE_NKEY_PHRASE (finding a seed
# for it is a discrete logarithm). Configured as a user that may do nothing, it makes nats-server send every
# client a nonce (the server sends one only when some nkey user exists), which a node signs with its own key.
NONCE_NKEY_PHRASE = b"flotilla: a key nobody holds, only to make nats-server send a nonce"
NONCE_NKEY = "UC22UEGTJBMWTBTPYY3BYZFXICIKJBA5N7E3PCPHQDSNYXZLZ2BID5ZY"
SERVERS_CONNZ_SUBJECT = "$SYS.REQ.SERVER.PING.CONNZ"  # every server answers with its connections
# The KV bucket of the orchestrator's rollout leases (its `lease_bucket` setting defaults to this).
LEASE_BUCKET = "upgrade_orchestrator_leases"
# Server-wide bounds every connection gets from the generated nats-server configuration (`flotilla up`,
# deploy/components/nats/nats.conf). nats-server ignores the limits of a user JWT issued by an auth callout
# in configuration mode (it copies only the permissions), so a member's subscription flood is bounded here:
# the busiest service holds a few hundred subscriptions; beyond the bound the server refuses each SUB with
# "maximum subscriptions exceeded" and the flood stops growing server memory.
MAX_SUBSCRIPTIONS_PER_CONNECTION = 4096
MAX_PAYLOAD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Grant:
    """Publish and subscribe allow-lists; `responses`: may answer requests it received (allow_responses)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    responses: bool = True
    notes: tuple[str, ...] = field(default=(), compare=False)


def inbox_prefix(user: str) -> str:
    """The inbox prefix a client connected as `user` must use: it may subscribe only below it.

    A cluster agent (`c.<cluster>`) gets `_INBOX.c.<cluster>._cluster`, so that its inbox does not cover
    its nodes' (`_INBOX.c.<cluster>.<node>`): with the cluster credential alone one cannot read a node's
    command deliveries."""
    if not user:
        return INBOX_ROOT
    parts = user.split(".")
    if len(parts) == 2 and parts[0] == CLUSTER_USER_PREFIX:
        return f"{INBOX_ROOT}.{user}.{CLUSTER_AGENT_NODE}"
    return f"{INBOX_ROOT}.{user}"


def cluster_user(cluster_id: str, node: str = "") -> str:
    """`c.<cluster>` or `c.<cluster>.<node>`: the user name an agent connects with."""
    user = f"{CLUSTER_USER_PREFIX}.{check_token('cluster', cluster_id)}"
    return f"{user}.{check_token('node', node)}" if node else user


def node_login_token(user: str, credential: str) -> str:
    """The CONNECT token of a node's login: nats-py sends a token (not user and password) beside the
    node's nkey and nonce signature, so the user name and the cluster credential travel in it."""
    return f"{user}{NODE_TOKEN_SEPARATOR}{credential}"


def parse_node_login_token(token: str) -> tuple[str, str]:
    """(user, credential) of a node login's token; ("", "") when it is not one."""
    user, sep, credential = token.partition(NODE_TOKEN_SEPARATOR)
    return (user, credential) if sep and user and credential else ("", "")


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
    for spec in STREAMS:
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
        subscribe += [subjects.ALL_HEARTBEATS, subjects.ALL_HEARTBEAT_BATCHES, f"{subjects.HB_PARTITION_PREFIX}.>"]
    if service is Service.SCHEDULER:
        publish.append(f"{subjects.AGENT_PREFIX}.*.{CLUSTER_AGENT_NODE}.apply")
        streams += [FLEET_AGENT.name, FLEET_REPORTS.name]  # applied reports
    if service is Service.UPGRADE_ORCHESTRATOR:
        publish.append(f"{subjects.AGENT_PREFIX}.*.*.step")
        streams += [FLEET_AGENT.name, FLEET_REPORTS.name, f"KV_{LEASE_BUCKET}"]  # node-step reports
        publish.append(f"$KV.{LEASE_BUCKET}.>")
    if service is Service.NODE_AGENT:
        streams.append(FLEET_AGENT.name)  # a node-agent process without a cluster credential (tests, dev)
        publish += [subjects.ALL_HEARTBEATS, subjects.ALL_HEARTBEAT_BATCHES]
        publish.append(subjects.command(Service.REGISTRATION, "join"))
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
    """The JetStream subjects of one agent's own durable consumer on FLEET_AGENT, and nothing wider.

    A node reads the consumer the hub created for it when it had work (flotilla_runtime.agent_consumers): it
    may not create one. The cluster agent creates its own, and only with the create form that names the
    filter in the subject (the server checks it against the configuration): the legacy DURABLE.CREATE would
    let it filter its consumer on another cluster's subjects."""
    name = agent_consumer(cluster_id, node)
    api, stream = "$JS.API", FLEET_AGENT.name
    create = (f"{api}.CONSUMER.CREATE.{stream}.{name}.{subjects.agent_commands_for(cluster_id, node)}",)
    return (
        *(create if node == CLUSTER_AGENT_NODE else ()),
        f"{api}.CONSUMER.INFO.{stream}.{name}",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.{name}",
        f"$JS.ACK.{stream}.{name}.>",
    )


def _host_keys_read(cluster_id: str) -> tuple[str, str]:
    """(publish, subscribe): the cluster's published host keys, last value and updates."""
    subject = f"{subjects.EVT_PREFIX}.{Entity.HOST_KEYS.value}.{cluster_id}"
    return f"$JS.API.DIRECT.GET.{FLEET_EVENTS.name}.{subject}.set", f"{subject}.>"


def _dead_letters(cluster_id: str) -> str:
    return f"{subjects.EVT_PREFIX}.{Entity.DEAD_LETTER.value}.{Service.NODE_AGENT.value}.{cluster_id}.recorded"


def cluster_grant(cluster_id: str) -> Grant:
    """An approved cluster's agent (`c.<cluster>`): inventory, applied reports, dead letters, host keys, the
    `_cluster` consumer, and its cluster's heartbeat batches (`fleet.v1.hb.<cluster>`: a relay of its nodes'
    liveness, which the heartbeat service admits only for the cluster's own nodes, within its inventory and
    quota). It speaks for no node otherwise: no single node's heartbeat, no step event, no node's consumer or
    inbox."""
    check_token("cluster", cluster_id)
    host_keys_get, host_keys = _host_keys_read(cluster_id)
    publish = [
        subjects.heartbeat_batch(cluster_id),
        f"{subjects.EVT_PREFIX}.{Entity.APPLIED.value}.{cluster_id}.>",
        _dead_letters(cluster_id),
        host_keys_get,
        *AGENT_COMMANDS,
        *agent_consumer_subjects(cluster_id, CLUSTER_AGENT_NODE),
    ]
    # Its own command subjects: a command published there is also its wake-up call (flotilla_runtime.agent_inbox).
    wake = subjects.agent_commands_for(cluster_id, CLUSTER_AGENT_NODE)
    subscribe = [f"{inbox_prefix(cluster_user(cluster_id))}.>", host_keys, wake]
    return Grant(publish=tuple(publish), subscribe=tuple(subscribe), responses=False)


def node_grant(cluster_id: str, node: str) -> Grant:
    """One node's agent (`c.<cluster>.<node>`, key proven): its own heartbeat, step events, consumer and inbox,
    the dead letters of its commands, the cluster's host keys and the heartbeat config. Nothing to answer."""
    check_token("cluster", cluster_id)
    check_token("node", node)
    if node == CLUSTER_AGENT_NODE:
        raise ValueError(f"{CLUSTER_AGENT_NODE} is the cluster agent's consumer, not a node")
    host_keys_get, host_keys = _host_keys_read(cluster_id)
    publish = [
        subjects.heartbeat(cluster_id, node),
        f"{subjects.EVT_PREFIX}.{Entity.NODE_STEP.value}.{cluster_id}.{node}.>",
        _dead_letters(cluster_id),
        host_keys_get,
        _heartbeat_config(),
        *agent_consumer_subjects(cluster_id, node),
    ]
    wake = subjects.agent_commands_for(cluster_id, node)  # its own commands wake it (see cluster_grant)
    subscribe = [f"{inbox_prefix(cluster_user(cluster_id, node))}.>", host_keys, wake]
    return Grant(publish=tuple(publish), subscribe=tuple(subscribe), responses=False)


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
