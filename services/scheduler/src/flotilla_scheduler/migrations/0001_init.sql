-- The scheduler's own state: subscriptions, their placements, applied status, and its read model of clusters.
CREATE TABLE subscriptions (
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    spec BLOB NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    decision INTEGER NOT NULL DEFAULT 0,
    placed_policy BLOB,
    unplaced INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT ''
);
CREATE TABLE placements (
    name TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    replicas INTEGER,
    since TEXT NOT NULL,
    digest TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (name, cluster_id)
);
CREATE INDEX placements_by_cluster ON placements (cluster_id);
CREATE TABLE applied (
    name TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    generation INTEGER NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    reported_at TEXT,
    PRIMARY KEY (name, cluster_id)
);
CREATE TABLE clusters (
    cluster_id TEXT PRIMARY KEY,
    record BLOB NOT NULL
);
CREATE TABLE scheduler_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
)
