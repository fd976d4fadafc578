-- Row counts and order-independent content checksums recorded in the snapshot manifest and in bundle.json,
-- against the same recomputed from the files now. A difference means a file was changed or lost after it was written.
SELECT object, recorded_rows, actual_rows, recorded_checksum, actual_checksum
FROM integrity
WHERE recorded_rows <> actual_rows OR recorded_checksum <> actual_checksum
ORDER BY object;
