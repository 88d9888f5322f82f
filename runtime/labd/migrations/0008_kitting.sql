-- Labwright store, version 8: kitting (docs/inventory.md). Before a run's first step, the
-- technician's pick list: each item (a container from storage, new labware labelled for the
-- run, a reagent lot poured) with where it comes from, where it goes and the barcode that
-- confirms it; who confirmed it and when is the audit trail.

CREATE TABLE pick_items (
    run_id TEXT NOT NULL REFERENCES runs(id),
    n BIGINT NOT NULL,
    kind TEXT NOT NULL,
    what TEXT NOT NULL,
    from_place TEXT NOT NULL,
    to_place TEXT NOT NULL,
    expected TEXT NOT NULL,
    thaw_min BIGINT NOT NULL,
    confirmed_by TEXT,
    confirmed_at BIGINT,
    PRIMARY KEY (run_id, n)
);

CREATE INDEX pick_items_open ON pick_items(confirmed_at, run_id);
