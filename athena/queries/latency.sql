-- latency: p50/p90/p99/max of duration_ms and request count per service and route, upstream
-- host or method (--by). Slowest p99 first. On DuckDB the percentiles are exact (nearest rank,
-- quantile_disc); Athena's approx_percentile (t-digest) is within about 1% rank error on large
-- groups, and can differ more on small ones (of 100 requests or fewer, its p99 may be the max).
-- Route: the path without its query string, id-like segments folded to {id} (see errors.sql);
-- with raw_paths the path as logged. total_rows: the row count before the LIMIT.
-- Percentiles cannot be summed from counts as errors.sql and top.sql do, so every request is
-- aggregated here; but the regular expressions run once per distinct path without its query
-- string (paths, routed), joined back to the requests on that bare path, not once per request.
-- With --by upstream or method, or raw_paths, paths is empty: no route work at all. A NULL
-- path matches no route in the join and stays NULL, as it did folded per request.
-- Parameters: the common filter set, group_by ('path' | 'upstream' | 'method'), raw_paths,
-- row_limit.
WITH paths AS (
  SELECT DISTINCT split_part(path, '?', 1) AS bare
  FROM envoy_access
  WHERE :group_by = 'path' AND NOT :raw_paths
    AND dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
    AND "timestamp" >= CAST(:since AS timestamp)
    AND "timestamp" < CAST(:until AS timestamp)
    AND (:path_prefix = '' OR starts_with(path, :path_prefix))
    AND (:method = '' OR method = :method)
),
routed AS (
  SELECT
    bare,
    regexp_replace(
      regexp_replace(
        regexp_replace(bare, '/([0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}|[^/]*[0-9]{4}[^/]*)/', '/{id}/'),
        '/([0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}|[^/]*[0-9]{4}[^/]*)/', '/{id}/'),
      '/([0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}|[^/]*[0-9]{4}[^/]*)$', '/{id}') AS route
  FROM paths
),
requests AS (
  SELECT
    service,
    CASE :group_by
      WHEN 'upstream' THEN coalesce(upstream_host, '-')
      WHEN 'method' THEN method
      WHEN 'path' THEN CASE WHEN :raw_paths THEN path ELSE split_part(path, '?', 1) END
    END AS bare,
    duration_ms
  FROM envoy_access
  WHERE dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
    AND "timestamp" >= CAST(:since AS timestamp)
    AND "timestamp" < CAST(:until AS timestamp)
    AND (:path_prefix = '' OR starts_with(path, :path_prefix))
    AND (:method = '' OR method = :method)
)
SELECT
  requests.service,
  CASE WHEN :group_by = 'path' AND NOT :raw_paths THEN routed.route ELSE requests.bare END
    AS "key",
  count(*) AS requests,
  approx_percentile(duration_ms, 0.5) AS p50_ms,
  approx_percentile(duration_ms, 0.9) AS p90_ms,
  approx_percentile(duration_ms, 0.99) AS p99_ms,
  max(duration_ms) AS max_ms,
  count(*) OVER () AS total_rows
FROM requests
LEFT JOIN routed ON requests.bare = routed.bare
GROUP BY 1, 2
ORDER BY p99_ms DESC, requests DESC, 1, 2
LIMIT :row_limit
