-- Labwright store, version 15: shipments a tenant declares before sending them. The manifest
-- is kept as declared; technicians receive it at the bench (scanning each container), which
-- marks it received in the same transaction that makes its containers — a shipment is
-- received once, whole.

CREATE TABLE shipments (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    declared_at BIGINT NOT NULL,
    declared_by TEXT NOT NULL,
    manifest TEXT NOT NULL,
    -- The manifest's barcodes, comma-separated, for listings.
    barcodes TEXT NOT NULL,
    received_at BIGINT,
    received_by TEXT
);

CREATE INDEX shipments_open ON shipments(received_at, declared_at);
