-- Registration's own state: join tokens (hashed), clusters, node inventory, join idempotency, host keys.
CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE tokens (
    token_id    TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    info        BLOB NOT NULL
);
CREATE TABLE clusters (
    cluster_id TEXT PRIMARY KEY,
    uid        TEXT NOT NULL,
    name       TEXT NOT NULL,
    state      TEXT NOT NULL,
    info       BLOB NOT NULL
);
CREATE UNIQUE INDEX clusters_live_name ON clusters(name) WHERE state != 'Deregistered';
CREATE UNIQUE INDEX clusters_live_uid ON clusters(uid) WHERE state != 'Deregistered';
CREATE INDEX clusters_uid ON clusters(uid);
CREATE INDEX clusters_order ON clusters(name, cluster_id);
CREATE TABLE nodes (
    cluster_id TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    info       BLOB NOT NULL,
    PRIMARY KEY (cluster_id, node_id)
);
CREATE TABLE join_requests (
    request_id TEXT PRIMARY KEY,
    cluster_id TEXT NOT NULL,
    uid        TEXT NOT NULL,
    rejoined   INTEGER NOT NULL,
    at         REAL NOT NULL
);
CREATE TABLE host_keys (
    cluster_id TEXT PRIMARY KEY,
    revision   INTEGER NOT NULL,
    keys       BLOB NOT NULL
);
