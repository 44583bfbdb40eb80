-- The simulated nodes of a `flotilla sim` process (the sim driver's state: kubelet version, readiness,
-- cordon and who cordoned, pods left, faults that already fired), saved before a step is reported done,
-- so a restarted sim finds its nodes as it left them. A real node-agent leaves it empty: its node is real.
CREATE TABLE sim_nodes (
    node_name  TEXT PRIMARY KEY,
    state      BLOB NOT NULL,
    updated_at REAL NOT NULL
)
