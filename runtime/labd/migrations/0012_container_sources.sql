-- Labwright store, version 12: lineage. Each well of a container a run made says which wells of
-- which of the tenant's containers its contents came from, by the run's journal, so a result
-- leads back through every run between to the samples the tenant shipped (docs/inventory.md).

CREATE TABLE container_sources (
    container_id TEXT NOT NULL REFERENCES containers(id),
    well TEXT NOT NULL,
    from_container TEXT NOT NULL REFERENCES containers(id),
    from_well TEXT NOT NULL,
    PRIMARY KEY (container_id, well, from_container, from_well)
);
