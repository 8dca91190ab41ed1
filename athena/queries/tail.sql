-- tail: the newest container_logs lines (application output, Envoy's own lines, unparsed access
-- lines), newest first; the CLI prints them oldest first. --grep is a regular expression.
-- No total_rows column: a count over every matching line would keep them all, messages
-- included; the CLI asks for one row more than --limit (row_limit) to know it cut.
-- Lines of the same millisecond (a stack trace) are ordered by the object they were read from
-- ("$path", the hidden column): objects are named by flush, so a millisecond's lines come
-- object by object. The local engine also orders an object's rows as they stand in it, which
-- is the order they were written (the writer sorts by time stably); Athena has no such column
-- and returns one object's lines of one millisecond in any order.
-- Parameters: dt_from, dt_to, since, until, all_services, services, stream, grep, row_limit.
SELECT
  "timestamp",
  service,
  container_name,
  stream,
  message
FROM container_logs
WHERE dt BETWEEN :dt_from AND :dt_to
  AND (:all_services OR service IN (:services))
  AND "timestamp" >= CAST(:since AS timestamp)
  AND "timestamp" < CAST(:until AS timestamp)
  AND (:stream = '' OR stream = :stream)
  AND (:grep = '' OR regexp_like(message, :grep))
ORDER BY "timestamp" DESC, "$path" DESC
LIMIT :row_limit
