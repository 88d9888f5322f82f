-- Labwright store, version 6: the lab's own stock (docs/inventory.md). Reagents by lot with an
-- expiry date and the volume on hand; consumables (tip racks, plates, reservoirs by labware
-- type) counted, with the count at which to reorder; and what each run used up, once per run,
-- which the usage report bills at the site's prices.

CREATE TABLE reagent_lots (
    reagent TEXT NOT NULL,
    lot TEXT NOT NULL,
    expires_on TEXT NOT NULL,
    volume_ul DOUBLE PRECISION NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (reagent, lot)
);

CREATE TABLE consumable_stock (
    load_name TEXT PRIMARY KEY,
    on_hand BIGINT NOT NULL,
    reorder_at BIGINT NOT NULL
);

CREATE TABLE consumed (
    run_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    item TEXT NOT NULL,
    unit TEXT NOT NULL,
    quantity DOUBLE PRECISION NOT NULL,
    lots TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (run_id, item)
);

CREATE INDEX consumed_by_tenant ON consumed(tenant_id, at);
