-- The plugin registry (docs/plugins.md): registered plugins, the grants each one requested
-- with an admin's decision, and the audit trail of every registration and decision.

CREATE TABLE plugins (
    id            uuid PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    version       text NOT NULL,
    pool          text NOT NULL,
    tenant_id     uuid,
    manifest      text NOT NULL,
    registered_at timestamptz NOT NULL,
    registered_by text NOT NULL
);

CREATE TABLE plugin_grants (
    id         uuid PRIMARY KEY,
    plugin_id  uuid NOT NULL REFERENCES plugins (id) ON DELETE CASCADE,
    direction  text NOT NULL CHECK (direction IN ('publish', 'subscribe')),
    pattern    text NOT NULL,
    state      text NOT NULL CHECK (state IN ('pending', 'approved', 'denied')),
    decided_at timestamptz,
    decided_by text,
    UNIQUE (plugin_id, direction, pattern)
);

-- No foreign key: the trail outlives the plugin it is about.
CREATE TABLE plugin_audit (
    id          uuid PRIMARY KEY,
    plugin_id   uuid NOT NULL,
    plugin_name text NOT NULL,
    grant_id    uuid,
    action      text NOT NULL,
    detail      text NOT NULL,
    actor       text NOT NULL,
    at          timestamptz NOT NULL
);
CREATE INDEX plugin_audit_by_plugin ON plugin_audit (plugin_id, id);
