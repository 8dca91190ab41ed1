-- errors: responses in a status range (5xx unless --status says otherwise) by service, route,
-- status code and Envoy response flags, with the share of all requests on that route. Most
-- frequent first.
-- Route: the path without its query string, id-like segments folded to {id}: all digits, a UUID,
-- 16+ hex digits, or any segment with a run of 4+ digits (SKU-99880, 2024-05-01); two passes
-- fold neighbouring ids, the third a last segment. With raw_paths the path exactly as logged.
-- total_rows: how many rows there are before the LIMIT. Requests are counted by the path without
-- its query string first (raw), so the regular expressions run once per distinct path (routed).
-- Parameters: dt_from, dt_to, since, until, all_services, services (list), path_prefix,
-- path_route (a regex on path: --path given as a printed route, see athena/routes.py), method,
-- raw_paths, status_min, status_max, row_limit.
WITH raw AS (
  SELECT
    service,
    CASE WHEN :raw_paths THEN path ELSE split_part(path, '?', 1) END AS bare,
    response_code,
    response_flags,
    count(*) AS n
  FROM envoy_access
  WHERE dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
    AND "timestamp" >= CAST(:since AS timestamp)
    AND "timestamp" < CAST(:until AS timestamp)
    AND (:path_prefix = '' OR starts_with(path, :path_prefix))
    AND (:path_route = '' OR regexp_like(path, :path_route))
    AND (:method = '' OR method = :method)
  GROUP BY 1, 2, 3, 4
),
routed AS (
  SELECT
    service,
    CASE WHEN :raw_paths THEN bare ELSE
      regexp_replace(
        regexp_replace(
          regexp_replace(bare, '/([0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}|[^/]*[0-9]{4}[^/]*)/', '/{id}/'),
          '/([0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}|[^/]*[0-9]{4}[^/]*)/', '/{id}/'),
        '/([0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,}|[^/]*[0-9]{4}[^/]*)$', '/{id}')
    END AS route,
    response_code,
    response_flags,
    n
  FROM raw
),
counted AS (
  SELECT
    service,
    route AS path,
    response_code,
    response_flags,
    CAST(sum(n) AS bigint) AS n,
    CAST(sum(sum(n)) OVER (PARTITION BY service, route) AS bigint) AS path_requests
  FROM routed
  GROUP BY service, route, response_code, response_flags
)
SELECT
  service,
  path,
  response_code,
  response_flags,
  n AS "count",
  round(CAST(n AS double) * 100 / path_requests, 2) AS path_share_pct,
  path_requests,
  count(*) OVER () AS total_rows
FROM counted
WHERE response_code BETWEEN :status_min AND :status_max
ORDER BY "count" DESC, service, path, response_code, response_flags
LIMIT :row_limit
