-- errors: responses in a status range (5xx unless --status says otherwise) by path, status code
-- and Envoy response flags, with the share of all requests on that path. Most frequent first.
-- Parameters: dt_from, dt_to, since, until, all_services, services (list), path_prefix, method,
-- status_min, status_max, row_limit.
WITH counted AS (
  SELECT
    path,
    response_code,
    response_flags,
    count(*) AS n,
    CAST(sum(count(*)) OVER (PARTITION BY path) AS bigint) AS path_requests
  FROM envoy_access
  WHERE dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
    AND "timestamp" >= CAST(:since AS timestamp)
    AND "timestamp" < CAST(:until AS timestamp)
    AND (:path_prefix = '' OR starts_with(path, :path_prefix))
    AND (:method = '' OR method = :method)
  GROUP BY path, response_code, response_flags
)
SELECT
  path,
  response_code,
  response_flags,
  n AS "count",
  round(CAST(n AS double) * 100 / path_requests, 2) AS path_share_pct,
  path_requests
FROM counted
WHERE response_code BETWEEN :status_min AND :status_max
ORDER BY "count" DESC, path, response_code, response_flags
LIMIT :row_limit
