-- Extensions and schemas of the Ralph Orchestrator database.
-- uuid-ossp gives uuid_generate_v4() for primary keys; pg_stat_statements
-- records query statistics (the server must also preload it, which the RDS
-- parameter group in stacks/aws-production.yaml does).
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;

-- `ralph` holds the application's data, `audit` the append-only activity log.
CREATE SCHEMA IF NOT EXISTS ralph;
CREATE SCHEMA IF NOT EXISTS audit;

-- Nobody creates objects in `public` by accident.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
