-- services: every service with data in the hours in range, its hours of data and newest line.
-- Parameters: dt_from, dt_to, all_services, services (whole hours: no since/until), and now:
-- newest is the newest line not stamped after it (a source whose clock is ahead says nothing
-- of how fresh the data is); ahead is the newest line stamped after it (NULL: none), which
-- `logq services` names in a note rather than as a column.
SELECT
  service,
  sum(access_hours) AS access_hours,
  sum(log_hours) AS log_hours,
  max(newest) AS newest,
  max(ahead) AS ahead
FROM (
  SELECT service, count(DISTINCT dt) AS access_hours, 0 AS log_hours,
    max(CASE WHEN "timestamp" <= CAST(:now AS timestamp) THEN "timestamp" END) AS newest,
    max(CASE WHEN "timestamp" > CAST(:now AS timestamp) THEN "timestamp" END) AS ahead
  FROM envoy_access
  WHERE dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
  GROUP BY service
  UNION ALL
  SELECT service, 0 AS access_hours, count(DISTINCT dt) AS log_hours,
    max(CASE WHEN "timestamp" <= CAST(:now AS timestamp) THEN "timestamp" END) AS newest,
    max(CASE WHEN "timestamp" > CAST(:now AS timestamp) THEN "timestamp" END) AS ahead
  FROM container_logs
  WHERE dt BETWEEN :dt_from AND :dt_to
    AND (:all_services OR service IN (:services))
  GROUP BY service
) AS t
GROUP BY service
ORDER BY service
