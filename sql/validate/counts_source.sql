-- Source vs snapshot: rows in the source now, rows the snapshot manifest recorded, rows in the snapshot's files.
-- Loss must be zero. (source_rows is NULL when the run started from a snapshot: there is no other source to ask.)
SELECT source_name, source_rows, snapshot_recorded_rows, snapshot_actual_rows
FROM source_counts
WHERE (source_rows IS NOT NULL AND source_rows <> snapshot_recorded_rows)
   OR snapshot_recorded_rows <> snapshot_actual_rows
ORDER BY source_name;
