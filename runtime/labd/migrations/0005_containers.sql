-- Labwright store, version 5: the containers tenants ship to the lab, received from a manifest
-- (docs/inventory.md): who owns each, its barcode, its labware type and where it is; what each
-- well holds (sample, liquid, volume); and an append-only history of what happened to it.

CREATE TABLE containers (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    barcode TEXT NOT NULL UNIQUE,
    load_name TEXT NOT NULL,
    location TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX containers_by_tenant ON containers(tenant_id);

CREATE TABLE container_wells (
    container_id TEXT NOT NULL REFERENCES containers(id),
    well TEXT NOT NULL,
    sample TEXT NOT NULL,
    liquid TEXT NOT NULL,
    volume_ul DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (container_id, well, liquid)
);

CREATE TABLE container_history (
    container_id TEXT NOT NULL REFERENCES containers(id),
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    actor TEXT NOT NULL,
    PRIMARY KEY (container_id, seq)
);
