-- latency: p50/p90/p99/max of duration_ms and request count per path, upstream host or method
-- (--by). Slowest p99 first. On DuckDB the percentiles are exact (nearest rank, quantile_disc);
-- Athena's approx_percentile (t-digest) is within about 1% rank error on large groups, and can
-- differ more on small ones (of 100 requests or fewer, its p99 may be the maximum).
-- Parameters: the common filter set, group_by ('path' | 'upstream' | 'method'), row_limit.
SELECT
  CASE :group_by
    WHEN 'upstream' THEN coalesce(upstream_host, '-')
    WHEN 'method' THEN method
    ELSE path
  END AS "key",
  count(*) AS requests,
  approx_percentile(duration_ms, 0.5) AS p50_ms,
  approx_percentile(duration_ms, 0.9) AS p90_ms,
  approx_percentile(duration_ms, 0.99) AS p99_ms,
  max(duration_ms) AS max_ms
FROM envoy_access
WHERE dt BETWEEN :dt_from AND :dt_to
  AND (:all_services OR service IN (:services))
  AND "timestamp" >= CAST(:since AS timestamp)
  AND "timestamp" < CAST(:until AS timestamp)
  AND (:path_prefix = '' OR starts_with(path, :path_prefix))
  AND (:method = '' OR method = :method)
GROUP BY 1
ORDER BY p99_ms DESC, requests DESC, 1
LIMIT :row_limit
