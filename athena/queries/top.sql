-- top: the most frequent routes, user agents or client addresses (--by) per service; the client
-- address is the first x-forwarded-for entry ('-' when the header was absent). Route: the path
-- without its query string, id-like segments folded to {id} (see errors.sql); with raw_paths the
-- path as logged. request_share_pct is of every request in range (all services selected).
-- total_rows: the row count before the LIMIT. Counted by key first (raw), so the regular
-- expressions run once per distinct path (routed), not once per request.
-- Parameters: the common filter set, top_by ('path' | 'user_agent' | 'client'), raw_paths,
-- row_limit.
WITH raw AS (
  SELECT
    service,
    CASE :top_by
      WHEN 'user_agent' THEN coalesce(user_agent, '-')
      WHEN 'client' THEN coalesce(trim(split_part(x_forwarded_for, ',', 1)), '-')
      WHEN 'path' THEN CASE WHEN :raw_paths THEN path ELSE split_part(path, '?', 1) END
    END AS bare,
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
routed AS (
  SELECT
    service,
    CASE WHEN :top_by <> 'path' OR :raw_paths THEN bare ELSE
      regexp_replace(
        regexp_replace(
          regexp_replace(bare, '/([0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}|[^/]*[0-9]{4}[^/]*)/', '/{id}/'),
          '/([0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}|[^/]*[0-9]{4}[^/]*)/', '/{id}/'),
        '/([0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}|[^/]*[0-9]{4}[^/]*)$', '/{id}')
    END AS "key",
    n,
    errors
  FROM raw
)
SELECT
  service,
  "key",
  CAST(sum(n) AS bigint) AS requests,
  round(CAST(sum(n) AS double) * 100 / CAST(sum(sum(n)) OVER () AS double), 2) AS request_share_pct,
  CAST(sum(errors) AS bigint) AS errors_5xx,
  count(*) OVER () AS total_rows
FROM routed
GROUP BY service, "key"
ORDER BY requests DESC, service, "key"
LIMIT :row_limit
