-- Labwright store, version 14: the audit trail keeps the order entries were written in, so two
-- entries of the same millisecond (maintenance on, then off) read back newest first, not in
-- the order of their random ids. Entries before this version keep 0: their time orders them.

ALTER TABLE audit ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
