-- The upgrade-orchestrator's own state: rollouts (row, pinned plan, clusters, nodes, failures), every
-- command issued (at most once per id), start idempotency, and the fleet read model fed by events.
CREATE TABLE rollouts (
    rollout_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    state      TEXT NOT NULL,
    record     BLOB NOT NULL
);
CREATE INDEX rollouts_created ON rollouts(created_at, rollout_id);
CREATE TABLE rollout_plans (
    rollout_id TEXT PRIMARY KEY,
    plan       BLOB NOT NULL
);
CREATE TABLE rollout_clusters (
    rollout_id TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    position   INTEGER NOT NULL,
    record     BLOB NOT NULL,
    PRIMARY KEY (rollout_id, cluster_id)
);
CREATE TABLE rollout_nodes (
    rollout_id TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    record     BLOB NOT NULL,
    PRIMARY KEY (rollout_id, cluster_id, node_id)
);
CREATE TABLE rollout_failures (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id TEXT NOT NULL,
    record     BLOB NOT NULL
);
CREATE INDEX rollout_failures_rollout ON rollout_failures(rollout_id, seq);
CREATE TABLE commands (
    command_id TEXT PRIMARY KEY,
    rollout_id TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    step       TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    direction  TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    issued_at  REAL NOT NULL
);
CREATE TABLE start_requests (
    request_id TEXT PRIMARY KEY,
    rollout_id TEXT NOT NULL
);
CREATE TABLE fleet_clusters (
    cluster_id TEXT PRIMARY KEY,
    record     BLOB NOT NULL
)
