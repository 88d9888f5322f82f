-- Labwright store, version 10: the service class a run was submitted in (standard, priority or
-- spot): how it is planned and billed.

ALTER TABLE runs ADD COLUMN service_class TEXT NOT NULL DEFAULT 'standard';
