-- How much of the sample sample_values could compare with source rows, and why any memory could not be (the
-- numbers are printed under sample_values). Fails when a sample was taken and no memory was compared (a check
-- that compares nothing proves nothing) and when a sampled memory's source_key or content is not a JSON object.
-- Memories a mapping derives rather than copying one row (their source_name is no snapshot table) are counted,
-- not failed.
SELECT reason, rows, example_key
FROM sample_coverage
WHERE (reason = 'compared' AND rows = 0 AND (SELECT sum(rows) FROM sample_coverage) > 0)
   OR (reason LIKE '%not a JSON object%' AND rows > 0)
ORDER BY reason;
