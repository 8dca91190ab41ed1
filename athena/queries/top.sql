-- top: the most frequent paths, user agents or client addresses (--by); the client address is the
-- first x-forwarded-for entry ('-' when the header was absent).
-- Parameters: the common filter set, top_by ('path' | 'user_agent' | 'client'), row_limit.
WITH scoped AS (
  SELECT
    CASE :top_by
      WHEN 'user_agent' THEN coalesce(user_agent, '-')
      WHEN 'client' THEN coalesce(trim(split_part(x_forwarded_for, ',', 1)), '-')
      ELSE path
    END AS "key",
    response_code
  FROM envoy_access
  WHERE dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
    AND "timestamp" >= CAST(:since AS timestamp)
    AND "timestamp" < CAST(:until AS timestamp)
    AND (:path_prefix = '' OR starts_with(path, :path_prefix))
    AND (:method = '' OR method = :method)
)
SELECT
  "key",
  count(*) AS requests,
  round(CAST(count(*) AS double) * 100 / CAST(sum(count(*)) OVER () AS double), 2) AS request_share_pct,
  count_if(response_code >= 500) AS errors_5xx
FROM scoped
GROUP BY "key"
ORDER BY requests DESC, "key"
LIMIT :row_limit
