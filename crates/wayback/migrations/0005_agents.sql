-- Placement on agents (`wayback agent` VMs).
-- agent: the name of the agent that runs the instance's cluster ('' = the broker's own machine);
-- agent_host: the host binding credentials name (the agent's advertised address).
-- Ports are unique per machine, not across the platform: each agent has the whole port range.
ALTER TABLE instances ADD COLUMN agent TEXT NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN agent_host TEXT;
DROP INDEX instances_port;
CREATE UNIQUE INDEX instances_agent_port ON instances (agent, port);
