-- Source vs snapshot per group: a graph's nodes per label and relationships per type, counted by the server now
-- and in the snapshot. Loss must be zero. (Empty for sources without groups, and when the run started from a snapshot.)
SELECT source_name, column_name, value, source_rows, snapshot_rows
FROM group_counts
WHERE source_rows IS DISTINCT FROM snapshot_rows
ORDER BY source_name, column_name, value;
