-- tail: the newest container_logs lines (application output, Envoy's own lines, unparsed access
-- lines), newest first; the CLI prints them oldest first. --grep is a regular expression.
-- No total_rows column: a count over every matching line would keep them all, messages
-- included; the CLI asks for one row more than --limit (row_limit) to know it cut.
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
ORDER BY "timestamp" DESC
LIMIT :row_limit
