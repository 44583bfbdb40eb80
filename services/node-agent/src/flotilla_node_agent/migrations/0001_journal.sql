-- The node-agent's journal: every (rollout, node, step, attempt) it executed, the lease epochs it obeyed,
-- and the cluster membership (credential) its cluster agent holds. One file serves one agent (a
-- DaemonSet pod) or every agent of a `flotilla sim` process, rows keyed by cluster and node.
CREATE TABLE steps (
    cluster_id  TEXT NOT NULL,
    node_id     TEXT NOT NULL,
    rollout_id  TEXT NOT NULL,
    step        TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    command_id  TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    report      BLOB,
    started_at  REAL NOT NULL,
    finished_at REAL,
    PRIMARY KEY (cluster_id, node_id, rollout_id, step, attempt)
);
CREATE TABLE epochs (
    cluster_id TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    rollout_id TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    PRIMARY KEY (cluster_id, node_id, rollout_id)
);
CREATE TABLE memberships (
    identity_uid TEXT PRIMARY KEY,
    cluster_id   TEXT NOT NULL,
    credential   TEXT,
    state        TEXT NOT NULL,
    reason       TEXT NOT NULL DEFAULT '',
    updated_at   REAL NOT NULL
);
