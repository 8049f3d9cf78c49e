-- Runs once, when the PostgreSQL volume is new. Nexus creates its own schema
-- (migrations at startup); this only keeps the database's defaults sane.
ALTER DATABASE nexus SET timezone TO 'UTC';
ALTER DATABASE nexus SET lock_timeout TO '30s';
