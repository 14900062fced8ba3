-- Portable between SQLite and PostgreSQL: TEXT and BIGINT only, times in Unix milliseconds.

CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    service_id TEXT NOT NULL,
    plan_id TEXT NOT NULL,
    organization_guid TEXT NOT NULL,
    space_guid TEXT NOT NULL,
    parameters TEXT NOT NULL,
    context TEXT NOT NULL,
    state TEXT NOT NULL,
    port BIGINT,
    database_name TEXT NOT NULL,
    owner_role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE UNIQUE INDEX instances_port ON instances (port);
CREATE INDEX instances_space ON instances (space_guid);

-- Every name an instance ever had; undo finds deleted instances by these.
CREATE TABLE instance_names (
    instance_id TEXT NOT NULL REFERENCES instances (id),
    seq BIGINT NOT NULL,
    name TEXT NOT NULL,
    source TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (instance_id, seq)
);
CREATE INDEX instance_names_name ON instance_names (name);

CREATE TABLE bindings (
    id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL REFERENCES instances (id),
    request TEXT NOT NULL,
    role_name TEXT NOT NULL,
    password TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX bindings_instance ON bindings (instance_id);

-- What the platform polls: one row per asynchronous OSB request.
CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    binding_id TEXT,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX operations_instance ON operations (instance_id, created_at);

-- The durable work behind operations (and, later, scheduled work): claimed with a lease.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    binding_id TEXT,
    operation_id TEXT,
    payload TEXT NOT NULL,
    step TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    run_after BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_runnable ON jobs (state, run_after);
CREATE INDEX jobs_instance ON jobs (instance_id);
