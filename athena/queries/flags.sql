-- flags: each Envoy response flag (UH, UF, URX, ...) counted on its own per service (a line with
-- "UF,URX" counts for both), with its share of that service's requests in range and how many
-- were 5xx. total_rows: the row count before the LIMIT.
-- Parameters: the common filter set, row_limit.
WITH scoped AS (
  SELECT service, response_flags, response_code
  FROM envoy_access
  WHERE dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
    AND "timestamp" >= CAST(:since AS timestamp)
    AND "timestamp" < CAST(:until AS timestamp)
    AND (:path_prefix = '' OR starts_with(path, :path_prefix))
    AND (:method = '' OR method = :method)
),
total AS (
  SELECT service, count(*) AS requests FROM scoped GROUP BY service
)
SELECT
  s.service,
  f.flag,
  count(*) AS requests,
  round(CAST(count(*) AS double) * 100 / max(total.requests), 2) AS request_share_pct,
  count_if(s.response_code >= 500) AS errors_5xx,
  count(*) OVER () AS total_rows
FROM scoped s
CROSS JOIN UNNEST(split(s.response_flags, ',')) AS f (flag)
JOIN total ON total.service = s.service
WHERE s.response_flags IS NOT NULL AND s.response_flags <> '-' AND f.flag <> ''
GROUP BY s.service, f.flag
ORDER BY requests DESC, s.service, f.flag
LIMIT :row_limit
