-- requests: how many envoy_access lines match the common filters in range, and the newest of
-- them (the CLI says this when a canned query finds nothing, so "no errors" is never read from a
-- window that held no requests at all).
-- Parameters: the common filter set.
SELECT
  count(*) AS requests,
  max("timestamp") AS newest
FROM envoy_access
WHERE dt BETWEEN :dt_from AND :dt_to
  AND (:all_services OR service IN (:services))
  AND "timestamp" >= CAST(:since AS timestamp)
  AND "timestamp" < CAST(:until AS timestamp)
  AND (:path_prefix = '' OR starts_with(path, :path_prefix))
  AND (:path_route = '' OR regexp_like(path, :path_route))
  AND (:method = '' OR method = :method)
