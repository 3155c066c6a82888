-- The plugin registry (docs/plugins.md): registered plugins, the grants each one requested
-- with an admin's decision, and the audit trail of every registration and decision.

CREATE TABLE plugins (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    version       TEXT NOT NULL,
    pool          TEXT NOT NULL,
    tenant_id     TEXT,
    manifest      TEXT NOT NULL,
    registered_at TEXT NOT NULL,
    registered_by TEXT NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE plugin_grants (
    id         TEXT PRIMARY KEY,
    plugin_id  TEXT NOT NULL REFERENCES plugins (id) ON DELETE CASCADE,
    direction  TEXT NOT NULL CHECK (direction IN ('publish', 'subscribe')),
    pattern    TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied')),
    decided_at TEXT,
    decided_by TEXT,
    UNIQUE (plugin_id, direction, pattern)
) STRICT, WITHOUT ROWID;

-- No foreign key: the trail outlives the plugin it is about.
CREATE TABLE plugin_audit (
    id          TEXT PRIMARY KEY,
    plugin_id   TEXT NOT NULL,
    plugin_name TEXT NOT NULL,
    grant_id    TEXT,
    action      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    at          TEXT NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX plugin_audit_by_plugin ON plugin_audit (plugin_id, id);
