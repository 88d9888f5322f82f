-- Labwright store, version 7: each entry of a container's history says where the container went
-- (received at, made and stored at, stored at, discarded), so the lab can bill the days it kept
-- each container at each storage condition. Empty where it did not move (used by a run).

ALTER TABLE container_history ADD COLUMN location TEXT;
