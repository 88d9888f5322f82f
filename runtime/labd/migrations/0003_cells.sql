-- Labwright store, version 3: several labd nodes on one database. A queued run is claimed by
-- the work cell that will run it; a cell's lease says which node drives it, and the lease's
-- epoch fences out a node whose lease ran out (its late writes are refused).

ALTER TABLE runs ADD COLUMN cell TEXT;

CREATE TABLE cell_leases (
    cell TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
