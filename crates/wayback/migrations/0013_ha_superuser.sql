-- HA instances (issue 15): the superuser password every member of an HA instance shares (a
-- standby's catalog is its leader's, so one password works on each). Generated once when the
-- instance is provisioned, sealed with the operator's keys like binding passwords (context
-- "ha-superuser:<instance id>"; superuser_password_key: the sealing key's id). NULL for a
-- single-member instance, whose superuser password lives only in its cluster directory.
ALTER TABLE instances ADD COLUMN superuser_password TEXT;
ALTER TABLE instances ADD COLUMN superuser_password_key TEXT;
-- system_identifier: an HA instance's PostgreSQL system identifier (decimal text: it does not
-- fit a signed 64-bit column), learned from its first base backup; every member's archive
-- target names it (wal-push refuses WAL of any other cluster). NULL: not learned yet, or not HA.
ALTER TABLE instances ADD COLUMN system_identifier TEXT;
