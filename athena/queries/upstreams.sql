-- upstreams: per upstream host (one instance of a backend): requests, 5xx count and rate, p99 —
-- to find the one bad instance. Worst error rate first. '-' collects requests that never reached
-- an upstream (no route, no healthy host, ...). total_rows: the row count before the LIMIT.
-- Parameters: the common filter set, row_limit.
SELECT
  coalesce(upstream_host, '-') AS upstream_host,
  count(*) AS requests,
  count_if(response_code >= 500) AS errors_5xx,
  round(CAST(count_if(response_code >= 500) AS double) * 100 / count(*), 2) AS error_pct,
  approx_percentile(duration_ms, 0.99) AS p99_ms,
  count(*) OVER () AS total_rows
FROM envoy_access
WHERE dt BETWEEN :dt_from AND :dt_to
  AND (:all_services OR service IN (:services))
  AND "timestamp" >= CAST(:since AS timestamp)
  AND "timestamp" < CAST(:until AS timestamp)
  AND (:path_prefix = '' OR starts_with(path, :path_prefix))
  AND (:path_route = '' OR regexp_like(path, :path_route))
  AND (:method = '' OR method = :method)
GROUP BY 1
ORDER BY error_pct DESC, requests DESC, 1
LIMIT :row_limit
