-- Each node's own ed25519 key (a NATS user nkey seed): the node proves with it which node it is when it logs in
-- (it signs the server's nonce, and registration binds the node to the public key on its first login). It stays on
-- the node: in the agent's state database (a hostPath in the DaemonSet), or the sim's journal for its nodes.
CREATE TABLE node_keys (
    node_id    TEXT PRIMARY KEY,
    seed       TEXT NOT NULL,
    created_at REAL NOT NULL
)
