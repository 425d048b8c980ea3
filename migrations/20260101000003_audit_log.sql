-- The audit log: who did what to which resource, from where. Append-only
-- for the application (see the role's grants).
CREATE TABLE audit.activity_log (
    id          bigserial   PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    user_name   text        NOT NULL,
    action      text        NOT NULL,
    resource    text,
    details     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    ip          inet
);

CREATE INDEX activity_log_occurred_at_idx ON audit.activity_log (occurred_at DESC);
CREATE INDEX activity_log_user_idx ON audit.activity_log (user_name, occurred_at DESC);
CREATE INDEX activity_log_resource_idx ON audit.activity_log (resource);
