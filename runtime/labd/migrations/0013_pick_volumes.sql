-- Labwright store, version 13: how much of a reagent lot each pick-list item pours, so a run's
-- pick list draws on what other runs' lists (of runs not ended) have not already taken from
-- each lot (docs/inventory.md, "Kitting"). 0 for items that pour nothing.

ALTER TABLE pick_items ADD COLUMN volume_ul DOUBLE PRECISION NOT NULL DEFAULT 0;
