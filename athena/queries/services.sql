-- services: every service with data in range and its newest line, over both tables.
-- Parameters: dt_from, dt_to, since, until, all_services, services.
SELECT
  service,
  max(newest) AS newest,
  sum(access_lines) AS access_lines,
  sum(log_lines) AS log_lines
FROM (
  SELECT service, max("timestamp") AS newest, count(*) AS access_lines, 0 AS log_lines
  FROM envoy_access
  WHERE dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
    AND "timestamp" >= CAST(:since AS timestamp)
    AND "timestamp" < CAST(:until AS timestamp)
  GROUP BY service
  UNION ALL
  SELECT service, max("timestamp") AS newest, 0 AS access_lines, count(*) AS log_lines
  FROM container_logs
  WHERE dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
    AND "timestamp" >= CAST(:since AS timestamp)
    AND "timestamp" < CAST(:until AS timestamp)
  GROUP BY service
) AS t
GROUP BY service
ORDER BY service
