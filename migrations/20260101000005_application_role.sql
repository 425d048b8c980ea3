-- The role the orchestrator connects as. The guide grants ALL PRIVILEGES on
-- the schema; the application needs far less: read and write its rows,
-- append to the audit log, and use sequences. It cannot create, alter or
-- drop anything, and cannot rewrite or delete audit entries.
--
-- Roles are cluster-wide, so the role is created only if missing, and a
-- second database on the same server migrating at the same moment (staging
-- next to production) may create it first: that race is not an error. Its
-- password is set by the operator (ALTER ROLE ralph_app PASSWORD ...) or by
-- IAM authentication; no password ever appears in a migration.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ralph_app') THEN
        CREATE ROLE ralph_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END;
$$;

GRANT USAGE ON SCHEMA ralph, audit TO ralph_app;

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ralph TO ralph_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA ralph TO ralph_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA ralph GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO ralph_app;
ALTER DEFAULT PRIVILEGES IN SCHEMA ralph GRANT USAGE, SELECT ON SEQUENCES TO ralph_app;

GRANT SELECT, INSERT ON audit.activity_log TO ralph_app;
GRANT USAGE ON SEQUENCE audit.activity_log_id_seq TO ralph_app;

-- Unqualified names resolve to the application's schema. The setting is
-- per database: a role-wide ALTER ROLE would be one shared catalog row that
-- concurrent migrations of other databases fight over ("tuple concurrently
-- updated"), and it would leak this schema's search path into them.
DO $$
BEGIN
    EXECUTE format('ALTER ROLE ralph_app IN DATABASE %I SET search_path = ralph, public',
                   current_database());
END;
$$;
