-- Labwright store, version 9: durations from experience (docs/scheduling.md, "Durations from
-- experience"). One row per finished task, written once (keyed by run and task, so a restart
-- never counts a task twice): where it ran, the kind of work, the compiler's estimate and the
-- device seconds it took. Plans and quotes correct estimates from the latest rows.

CREATE TABLE task_durations (
    run_id TEXT NOT NULL REFERENCES runs(id),
    task_id BIGINT NOT NULL,
    instrument TEXT NOT NULL,
    class TEXT NOT NULL,
    kind TEXT NOT NULL,
    estimated_s DOUBLE PRECISION NOT NULL,
    actual_s DOUBLE PRECISION NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (run_id, task_id)
);

CREATE INDEX task_durations_at ON task_durations(at);
