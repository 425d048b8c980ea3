-- The role the orchestrator connects as. The guide grants ALL PRIVILEGES on
-- the schema; the application needs far less: read and write its rows,
-- append to the audit log, and use sequences. It cannot create, alter or
-- drop anything, and cannot rewrite or delete audit entries.
--
-- Roles are cluster-wide, so the role is created only if missing. Its
-- password is set by the operator (ALTER ROLE ralph_app PASSWORD ...) or by
-- IAM authentication; no password ever appears in a migration.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ralph_app') THEN
        CREATE ROLE ralph_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
END;
$$;

GRANT USAGE ON SCHEMA ralph, audit TO ralph_app;

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ralph TO ralph_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA ralph TO ralph_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA ralph GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ralph_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA ralph GRANT USAGE, SELECT ON SEQUENCES TO ralph_app;

GRANT SELECT, INSERT ON audit.activity_log TO ralph_app;
GRANT USAGE ON SEQUENCE audit.activity_log_id_seq TO ralph_app;

-- Unqualified names resolve to the application's schema.
ALTER ROLE ralph_app SET search_path = ralph, public;
