-- Which key speaks for which node: the public nkey a node's agent proved on its first login (trust on first
-- use), checked on every later login (flotilla_registration.callout). A binding lives exactly as long as the
-- node is in its cluster's inventory and the cluster is a member (store.delete_nodes and clusters.deregister
-- drop it), so a node name that comes back binds afresh.
CREATE TABLE node_keys (
    cluster_id TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    nkey       TEXT NOT NULL,
    bound_at   REAL NOT NULL,
    PRIMARY KEY (cluster_id, node_id)
);
