-- Command ids are keyed (model.command_id): the key is made here, once, by SQLite's randomblob (ChaCha20
-- seeded from the OS since SQLite 3.40), and never leaves this file (not on the bus, not in a log).
-- Commands sent before this migration keep their unkeyed ids (their rows and in-flight nodes hold them),
-- and a (rollout, cluster, node, step, attempt, direction) is issued at most once whatever its id (I4).
CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
INSERT INTO secrets (name, value) VALUES ('command_key', randomblob(32));
CREATE UNIQUE INDEX commands_once ON commands(rollout_id, cluster_id, node_id, step, attempt, direction)
