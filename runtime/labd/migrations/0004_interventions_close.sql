-- Labwright store, version 4: an intervention still open when its run ends is closed with the
-- run (state `closed`, resolved by labd), so nothing is asked of a technician for a run that is
-- over. The state check gains `closed`: the table is rebuilt, which SQLite and PostgreSQL both
-- do the same way.

CREATE TABLE interventions_v4 (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id),
    task_id INTEGER,
    instrument TEXT,
    what TEXT NOT NULL,
    todo TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'done', 'redo', 'abort', 'closed')),
    created_at BIGINT NOT NULL,
    resolved_at BIGINT,
    resolved_by TEXT
);

INSERT INTO interventions_v4 (id, run_id, task_id, instrument, what, todo, state, created_at, resolved_at, resolved_by)
SELECT id, run_id, task_id, instrument, what, todo, state, created_at, resolved_at, resolved_by FROM interventions;

DROP TABLE interventions;

ALTER TABLE interventions_v4 RENAME TO interventions;
