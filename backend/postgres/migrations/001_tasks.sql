-- 001: the task (run) table and stored summaries.
--
-- The same columns and folding state as the SQLite task table (backend/embedded/tasks.py), so the
-- two stores give the same answers. Runs in the store's schema (the runner sets search_path).
--
-- Text columns compared or sorted on use COLLATE "C": run ids sort byte-wise (as SQLite's BINARY
-- collation does, so keyset cursors walk the same order), and lower() folds ASCII only (as
-- SQLite's lower() does, so the text filter matches the same runs).

CREATE TABLE tasks (
    tenant        text COLLATE "C" NOT NULL,
    run_id        text COLLATE "C" NOT NULL,
    agent         text COLLATE "C" NOT NULL DEFAULT '',
    task          text COLLATE "C" NOT NULL DEFAULT '',
    status        text COLLATE "C" NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled', 'timeout')),
    started_at    bigint,
    ended_at      bigint,
    last_seen     bigint,
    step_count    bigint NOT NULL DEFAULT 0,
    error_count   bigint NOT NULL DEFAULT 0,
    last_error    text COLLATE "C" NOT NULL DEFAULT '',
    last_error_at bigint,
    model         text NOT NULL DEFAULT '',
    model_at      bigint,
    input_tokens  bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cost_usd      double precision NOT NULL DEFAULT 0,
    triage        text COLLATE "C" NOT NULL DEFAULT 'new'
        CHECK (triage IN ('new', 'acked', 'resolved', 'ignored')),
    triage_by     text NOT NULL DEFAULT '',
    triage_note   text NOT NULL DEFAULT '',
    triage_at     bigint,
    has_start     boolean NOT NULL DEFAULT false,
    -- what lists sort and since/until filter on: rows inserted by hand may lack started_at
    sort_ts       bigint GENERATED ALWAYS AS (COALESCE(started_at, last_seen, 0)) STORED,
    -- what the text filter searches: the four searched fields lower-cased (ASCII only, as
    -- lower() does under COLLATE "C"), joined by U+0001
    search        text COLLATE "C" GENERATED ALWAYS AS (
        lower(task) || E'\x01' || lower(run_id) || E'\x01' || lower(last_error) || E'\x01'
        || lower(agent)
    ) STORED,
    PRIMARY KEY (tenant, run_id)
);

-- One index per list filter, each ending in the sort key, so a page is an ordered index scan
-- that stops after `limit` rows (keyset pagination: no OFFSET anywhere).
CREATE INDEX tasks_by_time   ON tasks (tenant, sort_ts, run_id);
CREATE INDEX tasks_by_status ON tasks (tenant, status, sort_ts, run_id);
CREATE INDEX tasks_by_agent  ON tasks (tenant, agent, sort_ts, run_id);
CREATE INDEX tasks_by_triage ON tasks (tenant, triage, sort_ts, run_id);
-- The failing-first sort's first group (failed, timeout, and running runs that may be stalled)
-- is usually a small part of the table: its own ordered index.
CREATE INDEX tasks_failing   ON tasks (tenant, sort_ts, run_id)
    WHERE status IN ('failed', 'timeout', 'running');
-- Stalled counts: running runs by silence.
CREATE INDEX tasks_running_seen ON tasks (tenant, last_seen) WHERE status = 'running';

CREATE TABLE summaries (
    tenant        text COLLATE "C" NOT NULL,
    run_id        text COLLATE "C" NOT NULL,
    input_hash    text COLLATE "C" NOT NULL,
    model         text COLLATE "C" NOT NULL,
    text          text NOT NULL,
    offline       boolean NOT NULL,
    input_tokens  bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cost_usd      double precision NOT NULL DEFAULT 0,
    created_at    bigint NOT NULL,
    error         text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, run_id, input_hash, model)
);

-- newest first; ties broken as the SQLite index breaks them (hash, then model, descending)
CREATE INDEX summaries_newest ON summaries (tenant, run_id, created_at, input_hash, model);
