-- services: every service with data in the hours in range, its hours of data and newest line.
-- Parameters: dt_from, dt_to, all_services, services (whole hours: no since/until).
SELECT
  service,
  sum(access_hours) AS access_hours,
  sum(log_hours) AS log_hours,
  max(newest) AS newest
FROM (
  SELECT service, count(DISTINCT dt) AS access_hours, 0 AS log_hours, max("timestamp") AS newest
  FROM envoy_access
  WHERE dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
  GROUP BY service
  UNION ALL
  SELECT service, 0 AS access_hours, count(DISTINCT dt) AS log_hours, max("timestamp") AS newest
  FROM container_logs
  WHERE dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
  GROUP BY service
) AS t
GROUP BY service
ORDER BY service
