-- HA instances (issue 15): an instance whose plan has metadata.wayback.ha runs as a Patroni
-- scope (named by the instance id) of several members. The instance row's port/agent/agent_host
-- keep meaning the first member (the primary it was created as), so nothing that reads them
-- breaks; every member, the first included, has a row here.
-- member: Patroni's member name, unique in the scope. agent: the machine ('' = the broker's own,
--   as instances.agent); agent_host: the host its bindings name. port: PostgreSQL's;
--   rest_port: Patroni's REST API (both held on that machine, like instances.port).
-- The replication role's password is instances.replication_password (sealed, context
-- "replication:<instance id>", as a follower's): an HA instance is never a follower.
CREATE TABLE ha_members (
    instance_id TEXT NOT NULL,
    member TEXT NOT NULL,
    agent TEXT NOT NULL,
    agent_host TEXT,
    port BIGINT NOT NULL,
    rest_port BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (instance_id, member)
);
CREATE UNIQUE INDEX ha_members_agent_port ON ha_members (agent, port);
CREATE UNIQUE INDEX ha_members_agent_rest_port ON ha_members (agent, rest_port);
