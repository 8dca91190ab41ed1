-- flags: each Envoy response flag (UH, UF, URX, ...) counted on its own (a line with "UF,URX"
-- counts for both), with its share of all requests in range and how many were 5xx.
-- Parameters: the common filter set, row_limit.
WITH scoped AS (
  SELECT response_flags, response_code
  FROM envoy_access
  WHERE dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
    AND "timestamp" >= CAST(:since AS timestamp)
    AND "timestamp" < CAST(:until AS timestamp)
    AND (:path_prefix = '' OR starts_with(path, :path_prefix))
    AND (:method = '' OR method = :method)
),
total AS (
  SELECT count(*) AS requests FROM scoped
)
SELECT
  f.flag,
  count(*) AS requests,
  round(CAST(count(*) AS double) * 100 / max(total.requests), 2) AS request_share_pct,
  count_if(s.response_code >= 500) AS errors_5xx
FROM scoped s
CROSS JOIN UNNEST(split(s.response_flags, ',')) AS f (flag)
CROSS JOIN total
WHERE s.response_flags IS NOT NULL AND s.response_flags <> '-' AND f.flag <> ''
GROUP BY f.flag
ORDER BY requests DESC, f.flag
LIMIT :row_limit
