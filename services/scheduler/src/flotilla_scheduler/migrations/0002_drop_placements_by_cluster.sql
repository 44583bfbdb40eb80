-- No query reads placements by cluster: memory keeps what is placed where, and the table is read whole at start.
-- The index only cost every placement written (a B-tree insert, and its pages rewritten at each commit).
DROP INDEX IF EXISTS placements_by_cluster
