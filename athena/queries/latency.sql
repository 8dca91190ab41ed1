-- latency: p50/p90/p99/max of duration_ms and request count per service and route, upstream
-- host or method (--by). Slowest p99 first. The percentiles are exact, nearest rank (p99: the
-- smallest duration with at least 99% of the timed requests at or below it), on Athena as on
-- DuckDB, where they equal quantile_disc; requests without a duration count in requests only.
-- Route: the path without its query string, id-like segments folded to {id} (see errors.sql);
-- with raw_paths the path as logged. total_rows: the row count before the LIMIT.
-- The table is read once (a WITH query used twice would be read twice: Athena (Trino) inlines
-- it wherever it is named): requests are counted per service, key and duration first (raw);
-- the regular expressions run on one row per distinct path (numbered, routed: CASE evaluates
-- them only where nth = 1, and the window hands the route to the path's other rows), not per
-- request; the percentiles come from running counts over those few rows (ranked). A NULL path
-- stays a NULL key. With --by upstream or method, or raw_paths, no route work at all.
-- Parameters: the common filter set, group_by ('path' | 'upstream' | 'method'), raw_paths,
-- row_limit.
WITH raw AS (
  SELECT
    service,
    CASE :group_by
      WHEN 'upstream' THEN coalesce(upstream_host, '-')
      WHEN 'method' THEN method
      WHEN 'path' THEN CASE WHEN :raw_paths THEN path ELSE split_part(path, '?', 1) END
    END AS bare,
    duration_ms,
    count(*) AS n
  FROM envoy_access
  WHERE dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
    AND "timestamp" >= CAST(:since AS timestamp)
    AND "timestamp" < CAST(:until AS timestamp)
    AND (:path_prefix = '' OR starts_with(path, :path_prefix))
    AND (:path_route = '' OR regexp_like(path, :path_route))
    AND (:method = '' OR method = :method)
  GROUP BY 1, 2, 3
),
numbered AS (
  SELECT service, bare, duration_ms, n, row_number() OVER (PARTITION BY bare) AS nth
  FROM raw
),
routed AS (
  SELECT
    service,
    CASE WHEN :group_by <> 'path' OR :raw_paths THEN bare ELSE max(CASE WHEN nth = 1 THEN
      regexp_replace(
        regexp_replace(
          regexp_replace(bare, '/([0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}|[^/]*[0-9]{4}[^/]*)/', '/{id}/'),
          '/([0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}|[^/]*[0-9]{4}[^/]*)/', '/{id}/'),
        '/([0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}|[^/]*[0-9]{4}[^/]*)$', '/{id}')
    END) OVER (PARTITION BY bare) END AS "key",
    duration_ms,
    n
  FROM numbered
),
ranked AS (
  SELECT
    service,
    "key",
    duration_ms,
    sum(sum(n)) OVER (PARTITION BY service, "key") AS requests,
    sum(sum(CASE WHEN duration_ms IS NOT NULL THEN n END)) OVER (PARTITION BY service, "key")
      AS timed,
    sum(sum(n)) OVER (
      PARTITION BY service, "key" ORDER BY duration_ms ASC NULLS LAST
      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    ) AS upto
  FROM routed
  GROUP BY service, "key", duration_ms
)
SELECT
  service,
  "key",
  CAST(max(requests) AS bigint) AS requests,
  min(CASE WHEN duration_ms IS NOT NULL AND upto * 2 >= timed THEN duration_ms END) AS p50_ms,
  min(CASE WHEN duration_ms IS NOT NULL AND upto * 10 >= timed * 9 THEN duration_ms END)
    AS p90_ms,
  min(CASE WHEN duration_ms IS NOT NULL AND upto * 100 >= timed * 99 THEN duration_ms END)
    AS p99_ms,
  max(duration_ms) AS max_ms,
  count(*) OVER () AS total_rows
FROM ranked
GROUP BY 1, 2
ORDER BY p99_ms DESC, requests DESC, 1, 2
LIMIT :row_limit
