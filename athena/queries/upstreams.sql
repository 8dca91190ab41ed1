-- upstreams: per upstream host (one instance of a backend): requests, 5xx count and rate, p99 —
-- to find the one bad instance. Worst error rate first. '-' collects requests that never reached
-- an upstream (no route, no healthy host, ...). total_rows: the row count before the LIMIT.
-- p99 is exact, nearest rank (the smallest duration with at least 99% of the host's timed
-- requests at or below it) on Athena as on DuckDB, ranked as in latency.sql, so a host's p99
-- is the same on both engines and in `latency --by upstream`. approx_percentile was not:
-- Athena's q-digest takes the smallest value with more than 99% at or below it (for 100 or
-- 200 requests the next one up), DuckDB's quantile_disc the nearest rank. Requests are counted
-- per host and duration first (counted), running counts over those few rows give the rank
-- (ranked): the table is read once. Requests without a duration count in requests only.
-- Parameters: the common filter set, row_limit.
WITH counted AS (
  SELECT
    coalesce(upstream_host, '-') AS upstream_host,
    duration_ms,
    count(*) AS n,
    count_if(response_code >= 500) AS errors
  FROM envoy_access
  WHERE dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
    AND "timestamp" >= CAST(:since AS timestamp)
    AND "timestamp" < CAST(:until AS timestamp)
    AND (:path_prefix = '' OR starts_with(path, :path_prefix))
    AND (:path_route = '' OR regexp_like(path, :path_route))
    AND (:method = '' OR method = :method)
  GROUP BY 1, 2
),
ranked AS (
  SELECT
    upstream_host,
    duration_ms,
    sum(n) OVER (PARTITION BY upstream_host) AS requests,
    sum(errors) OVER (PARTITION BY upstream_host) AS errors_5xx,
    sum(CASE WHEN duration_ms IS NOT NULL THEN n END) OVER (PARTITION BY upstream_host) AS timed,
    sum(n) OVER (
      PARTITION BY upstream_host ORDER BY duration_ms ASC NULLS LAST
      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    ) AS upto
  FROM counted
)
SELECT
  upstream_host,
  CAST(max(requests) AS bigint) AS requests,
  CAST(max(errors_5xx) AS bigint) AS errors_5xx,
  round(CAST(max(errors_5xx) AS double) * 100 / CAST(max(requests) AS double), 2) AS error_pct,
  min(CASE WHEN duration_ms IS NOT NULL AND upto * 100 >= timed * 99 THEN duration_ms END)
    AS p99_ms,
  count(*) OVER () AS total_rows
FROM ranked
GROUP BY 1
ORDER BY error_pct DESC, requests DESC, 1
LIMIT :row_limit
