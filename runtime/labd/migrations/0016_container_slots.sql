-- Labwright store, version 16: the position a container has at its location (a storage unit's
-- slot, a place on the receiving bench), so a technician finds it: the lowest free one when it
-- is put there, kept while it stays, none once discarded. Containers before this version have
-- none.

ALTER TABLE containers ADD COLUMN slot BIGINT;
