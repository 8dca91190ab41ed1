-- timeline: requests, 4xx, 5xx and code-0 responses (no_response: the client went away before
-- Envoy answered) per interval of every_seconds, oldest first. Buckets with no requests are
-- absent here; the CLI fills them with zeros. Buckets start on every_seconds boundaries, but
-- only rows in [since, until) count: the CLI labels a first bucket that since cuts with since.
-- Parameters: the common filter set, every_seconds.
SELECT
  from_unixtime(floor(to_unixtime("timestamp") / :every_seconds) * :every_seconds) AS bucket,
  count(*) AS requests,
  count_if(response_code BETWEEN 400 AND 499) AS errors_4xx,
  count_if(response_code >= 500) AS errors_5xx,
  count_if(response_code < 100) AS no_response
FROM envoy_access
WHERE dt BETWEEN :dt_from AND :dt_to
  AND (:all_services OR service IN (:services))
  AND "timestamp" >= CAST(:since AS timestamp)
  AND "timestamp" < CAST(:until AS timestamp)
  AND (:path_prefix = '' OR starts_with(path, :path_prefix))
  AND (:path_route = '' OR regexp_like(path, :path_route))
  AND (:method = '' OR method = :method)
GROUP BY 1
ORDER BY 1
