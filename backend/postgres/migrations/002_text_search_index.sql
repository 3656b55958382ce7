-- 002: a trigram index for the text filter (substring search), when pg_trgm can be had.
--
-- The extension is database-wide: an existing pg_trgm is used wherever it lives; otherwise it is
-- created in schema public (never in the store's own schema, which a test may drop with
-- CASCADE). Without the privilege to create or use it, the store works the same and the text
-- filter reads every run of the tenant instead. To get the index later, install pg_trgm and run
-- in the store's schema:
--   CREATE INDEX tasks_search_trgm ON tasks USING gin (search gin_trgm_ops);
DO $$
DECLARE
    ext_schema name;
BEGIN
    SELECT n.nspname INTO ext_schema
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'pg_trgm';
    IF ext_schema IS NULL THEN
        CREATE EXTENSION pg_trgm SCHEMA public;
        ext_schema := 'public';
    END IF;
    EXECUTE format(
        'CREATE INDEX tasks_search_trgm ON tasks USING gin (search %I.gin_trgm_ops)',
        ext_schema
    );
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'agentlog: no trigram index (%): the text filter reads every run', SQLERRM;
END
$$;
