-- Monthly partitions of ralph.orchestrations, created ahead of time.
--
-- ralph.ensure_partitions(months_ahead) creates the partitions for the
-- current month and the next `months_ahead` months, if missing, and returns
-- how many it created. `ralph-deploy db partitions STACK --env ENV` (or a
-- CronJob) calls it regularly; here it runs once for the first months.
--
-- Rows that already sit in the DEFAULT partition for a month that gets its
-- own partition are moved into it, so creating a partition never fails.
CREATE FUNCTION ralph.ensure_partitions(months_ahead integer DEFAULT 3) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    first_month date := date_trunc('month', now())::date;
    month_start date;
    month_end   date;
    part_name   text;
    created     integer := 0;
BEGIN
    IF months_ahead < 0 OR months_ahead > 36 THEN
        RAISE EXCEPTION 'months_ahead must be between 0 and 36, not %', months_ahead;
    END IF;
    FOR i IN 0..months_ahead LOOP
        month_start := (first_month + make_interval(months => i))::date;
        month_end   := (month_start + interval '1 month')::date;
        part_name   := format('orchestrations_y%sm%s', to_char(month_start, 'YYYY'), to_char(month_start, 'MM'));
        IF to_regclass(format('ralph.%I', part_name)) IS NULL THEN
            -- Park rows of that month that landed in DEFAULT, create the
            -- partition, then put them back (they now route to it).
            CREATE TEMP TABLE IF NOT EXISTS ralph_parked (LIKE ralph.orchestrations) ON COMMIT DROP;
            WITH moved AS (
                DELETE FROM ralph.orchestrations_default
                WHERE created_at >= month_start AND created_at < month_end
                RETURNING *
            )
            INSERT INTO ralph_parked SELECT * FROM moved;
            EXECUTE format(
                'CREATE TABLE ralph.%I PARTITION OF ralph.orchestrations FOR VALUES FROM (%L) TO (%L)',
                part_name, month_start, month_end
            );
            ALTER TABLE ralph.orchestrations DISABLE TRIGGER orchestrations_register_task_id;
            INSERT INTO ralph.orchestrations SELECT * FROM ralph_parked;
            ALTER TABLE ralph.orchestrations ENABLE TRIGGER orchestrations_register_task_id;
            DELETE FROM ralph_parked;
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END;
$$;

SELECT ralph.ensure_partitions(3);
