-- flags: each Envoy response flag (UH, UF, URX, ...) counted on its own per service (a line with
-- "UF,URX" counts for both), with its share of that service's requests in range and how many
-- were 5xx. total_rows: the row count before the LIMIT.
-- The table is read once: lines are counted per service and flag string first (counted), with
-- each service's total as a window over those few rows; the flags are split from there. A WITH
-- query used twice would be read twice: Athena (Trino) inlines it wherever it is named.
-- Parameters: the common filter set, row_limit.
WITH counted AS (
  SELECT
    service,
    response_flags,
    count(*) AS n,
    count_if(response_code >= 500) AS errors,
    sum(count(*)) OVER (PARTITION BY service) AS service_requests
  FROM envoy_access
  WHERE dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
    AND "timestamp" >= CAST(:since AS timestamp)
    AND "timestamp" < CAST(:until AS timestamp)
    AND (:path_prefix = '' OR starts_with(path, :path_prefix))
    AND (:path_route = '' OR regexp_like(path, :path_route))
    AND (:method = '' OR method = :method)
  GROUP BY service, response_flags
)
SELECT
  c.service,
  f.flag,
  CAST(sum(c.n) AS bigint) AS requests,
  round(CAST(sum(c.n) AS double) * 100 / max(c.service_requests), 2) AS request_share_pct,
  CAST(sum(c.errors) AS bigint) AS errors_5xx,
  count(*) OVER () AS total_rows
FROM counted c
CROSS JOIN UNNEST(split(c.response_flags, ',')) AS f (flag)
WHERE c.response_flags IS NOT NULL AND c.response_flags <> '-' AND f.flag <> ''
GROUP BY c.service, f.flag
ORDER BY requests DESC, c.service, f.flag
LIMIT :row_limit
