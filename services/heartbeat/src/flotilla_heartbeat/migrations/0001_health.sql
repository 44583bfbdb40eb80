-- The heartbeat service's own tables: membership read model, inventory, and checkpointed health.
CREATE TABLE hb_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE hb_members (
    cluster_id TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE hb_inventory (
    cluster_id TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    node_name  TEXT NOT NULL,
    PRIMARY KEY (cluster_id, node_id)
);
CREATE TABLE hb_nodes (
    cluster_id TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    node_name  TEXT,
    state      TEXT,
    since      REAL NOT NULL,
    reason     TEXT NOT NULL,
    last_seen  REAL,
    seq        INTEGER NOT NULL,
    skew       REAL NOT NULL,
    facts      BLOB,
    PRIMARY KEY (cluster_id, node_id)
);
CREATE TABLE hb_clusters (
    cluster_id TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    since      REAL NOT NULL,
    reason     TEXT NOT NULL,
    message    TEXT NOT NULL
);
