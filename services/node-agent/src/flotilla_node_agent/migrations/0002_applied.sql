-- What the cluster agent applied per subscription, so it can prune what is no longer desired, and the
-- last decision it obeyed, so a stale ApplyManifests (an older decision) is acknowledged and skipped.
CREATE TABLE applied_subscriptions (
    cluster_id   TEXT NOT NULL,
    subscription TEXT NOT NULL,
    generation   INTEGER NOT NULL,
    decision     INTEGER NOT NULL,
    objects      BLOB NOT NULL,
    applied_at   REAL NOT NULL,
    PRIMARY KEY (cluster_id, subscription)
)
