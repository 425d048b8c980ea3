-- Orchestration runs, partitioned by month of creation.
--
-- The production guide declares `ralph.orchestrations` as a plain table with
-- `task_id UNIQUE`, then creates a monthly partition of it. Both cannot hold:
-- a partition can only be attached to a table declared PARTITION BY, and on a
-- partitioned table every unique constraint must include the partition key.
-- What we chose:
--   * the table is PARTITION BY RANGE (created_at), one partition per month,
--     plus a DEFAULT partition so that no insert ever fails for lack of one;
--   * the primary key is (id, created_at) - id alone stays unique in practice
--     (uuid v4) and lookups by id use the index on id;
--   * task_id is unique across ALL partitions through `ralph.task_ids`, a
--     small unpartitioned registry filled by a trigger: a second run for the
--     same task fails with a unique violation, as the guide intended.
CREATE TABLE ralph.orchestrations (
    id           uuid        NOT NULL DEFAULT uuid_generate_v4(),
    task_id      text        NOT NULL,
    agent_type   text        NOT NULL,
    status       text        NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    completed_at timestamptz,
    metadata     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    metrics      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

CREATE TABLE ralph.orchestrations_default PARTITION OF ralph.orchestrations DEFAULT;

-- Indexes on the partitioned table are created on every partition.
CREATE INDEX orchestrations_id_idx ON ralph.orchestrations (id);
CREATE INDEX orchestrations_task_id_idx ON ralph.orchestrations (task_id);
CREATE INDEX orchestrations_status_idx ON ralph.orchestrations (status);
CREATE INDEX orchestrations_agent_status_created_idx ON ralph.orchestrations (agent_type, status, created_at);
CREATE INDEX orchestrations_created_at_idx ON ralph.orchestrations (created_at DESC);
CREATE INDEX orchestrations_metadata_idx ON ralph.orchestrations USING gin (metadata);

-- Global uniqueness of task_id.
CREATE TABLE ralph.task_ids (
    task_id    text        PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION ralph.register_task_id() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ralph.task_ids (task_id, created_at) VALUES (NEW.task_id, NEW.created_at);
    RETURN NEW;
END;
$$;

CREATE TRIGGER orchestrations_register_task_id
    BEFORE INSERT ON ralph.orchestrations
    FOR EACH ROW EXECUTE FUNCTION ralph.register_task_id();

-- updated_at follows every update.
CREATE FUNCTION ralph.touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER orchestrations_touch_updated_at
    BEFORE UPDATE ON ralph.orchestrations
    FOR EACH ROW EXECUTE FUNCTION ralph.touch_updated_at();
