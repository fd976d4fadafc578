-- Records of the source that are not in the snapshot because the tool could not read them (for example
-- function libraries or module auxiliary data in a Redis dump), per table. Each fails the check unless the run
-- was told to expect them (option allow-skipped). Keys expired at the snapshot's as-of time are listed in the
-- summary and the report but do not fail here: the expiry policy (option expired, default drop) asks for that.
SELECT table_name, kind, count, what, first_keys
FROM not_staged
WHERE kind = 'skipped' AND NOT allowed
ORDER BY table_name, what;
