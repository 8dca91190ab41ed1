-- trace: every access-log line carrying one x-request-id, across services (the front proxy and
-- each sidecar log the same id), in time order. The id matches without regard to case.
-- total_rows: the hop count before the LIMIT (the CLI says "showing N of M" when it cuts).
-- Hops that start in the same millisecond (a sidecar's inbound and outbound lines) come the
-- enclosing one first, by duration: ordered by time and service alone their order was
-- whatever the engine read first, and could differ between runs and engines.
-- Parameters: dt_from, dt_to, since, until, all_services, services, request_id, row_limit.
SELECT
  "timestamp",
  service,
  container_name,
  method,
  path,
  response_code,
  response_flags,
  duration_ms,
  upstream_service_time_ms,
  upstream_host,
  authority,
  count(*) OVER () AS total_rows
FROM envoy_access
WHERE dt BETWEEN :dt_from AND :dt_to
  AND (:all_services OR service IN (:services))
  AND "timestamp" >= CAST(:since AS timestamp)
  AND "timestamp" < CAST(:until AS timestamp)
  AND lower(request_id) = lower(:request_id)
ORDER BY "timestamp", duration_ms DESC NULLS LAST, service, container_name, upstream_host
LIMIT :row_limit
