-- Which clusters changed, in order (flotilla_registration.cluster_cache): `clusters.list` keeps every cluster
-- decoded in memory and reads only the rows changed since, instead of decoding the whole table again after each
-- write (at 10,000 clusters joining, every page of every `clusters list` decoded all of them and registration
-- had no time left for the joins). Filled by triggers, so no write can forget it, and rows once read are pruned.
CREATE TABLE cluster_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id TEXT NOT NULL
);
CREATE TRIGGER clusters_inserted AFTER INSERT ON clusters
BEGIN
    INSERT INTO cluster_changes (cluster_id) VALUES (NEW.cluster_id);
END;
CREATE TRIGGER clusters_updated AFTER UPDATE ON clusters
BEGIN
    INSERT INTO cluster_changes (cluster_id) VALUES (NEW.cluster_id);
END;
CREATE TRIGGER clusters_deleted AFTER DELETE ON clusters
BEGIN
    INSERT INTO cluster_changes (cluster_id) VALUES (OLD.cluster_id);
END;
