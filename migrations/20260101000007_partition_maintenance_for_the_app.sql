-- Partition maintenance that the application role may run.
--
-- ralph.ensure_partitions creates tables, which ralph_app must not be able
-- to do. This wrapper runs it with the rights of the role that ran the
-- migrations (SECURITY DEFINER) and nothing more: a fixed search path (the
-- catalog, then temporary objects), no arguments but the number of months,
-- and EXECUTE granted to ralph_app alone. It is what the orchestrator's
-- maintenance CronJob calls (templates/cronjob.yaml).
CREATE FUNCTION ralph.maintain_partitions(months_ahead integer DEFAULT 3) RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT ralph.ensure_partitions(months_ahead) $$;

REVOKE ALL ON FUNCTION ralph.maintain_partitions(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ralph.maintain_partitions(integer) TO ralph_app;

-- Called directly, the inner function runs with the caller's rights; nobody
-- but the owner needs it.
REVOKE ALL ON FUNCTION ralph.ensure_partitions(integer) FROM PUBLIC;
