-- Labwright store, version 2: instruments a technician took out of service, and tokens that
-- expire.

CREATE TABLE maintenance (
    instrument TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    set_by TEXT NOT NULL,
    since BIGINT NOT NULL
);

ALTER TABLE principals ADD COLUMN expires_at BIGINT;
