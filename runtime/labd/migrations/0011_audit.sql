-- Labwright store, version 11: the audit trail. Who did what by hand, when, and the reason
-- given: interventions resolved, kitting confirmed, maintenance on and off, the lab paused,
-- stopped and resumed, shipments and stock received, quotas and tokens (docs/runtime.md,
-- "Audit trail"). Append-only: nothing updates or deletes a row.

CREATE TABLE audit (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL
);

CREATE INDEX audit_at ON audit(at);
