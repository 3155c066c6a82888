-- The auth service: tenant plans, users, refresh tokens, JWT signing keys, revocations,
-- and API keys with roles, scopes, expiry and last use.

ALTER TABLE tenants ADD COLUMN plan TEXT NOT NULL DEFAULT 'standard';

-- SQLite cannot widen a CHECK constraint in place: the table is rebuilt. Existing keys keep
-- their role (admin) and get every scope ('*').
CREATE TABLE api_keys_v4 (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    name         TEXT NOT NULL,
    role         TEXT NOT NULL
                 CHECK (role IN ('viewer', 'member', 'admin', 'owner', 'platform_admin')),
    secret_hash  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    revoked_at   TEXT,
    -- Space-separated scope names, or '*' for every scope.
    scopes       TEXT NOT NULL DEFAULT '*',
    expires_at   TEXT,
    last_used_at TEXT
) STRICT;
INSERT INTO api_keys_v4 (id, tenant_id, name, role, secret_hash, created_at, revoked_at)
    SELECT id, tenant_id, name, role, secret_hash, created_at, revoked_at FROM api_keys;
DROP TABLE api_keys;
ALTER TABLE api_keys_v4 RENAME TO api_keys;
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, id);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    -- Lowercased by the application.
    email         TEXT NOT NULL,
    -- argon2id, PHC string format.
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL
                  CHECK (role IN ('viewer', 'member', 'admin', 'owner', 'platform_admin')),
    created_at    TEXT NOT NULL,
    disabled_at   TEXT,
    UNIQUE (tenant_id, email)
) STRICT;
CREATE INDEX users_by_email ON users (email);

-- Rotating refresh tokens: each use spends a token and adds the next one to its family;
-- presenting a spent token revokes the whole family.
CREATE TABLE refresh_tokens (
    id          TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    user_id     TEXT NOT NULL REFERENCES users (id),
    -- Hex SHA-256 of the token (256 random bits).
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    used_at     TEXT,
    revoked_at  TEXT
) STRICT;
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_by_user ON refresh_tokens (user_id);

-- JWT signing keys; the private key is sealed with the configured master key.
CREATE TABLE signing_keys (
    kid                   TEXT PRIMARY KEY,
    alg                   TEXT NOT NULL,
    encrypted_private_key BLOB NOT NULL,
    public_jwk            TEXT NOT NULL CHECK (json_valid(public_jwk)),
    created_at            TEXT NOT NULL,
    retire_at             TEXT NOT NULL,
    expire_at             TEXT NOT NULL
) STRICT;

-- Revocations of access tokens (by jti), API keys and users, in seq order; every instance
-- applies them to its in-memory set.
CREATE TABLE revocations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL CHECK (kind IN ('token', 'api_key', 'api_key_secret', 'user')),
    subject    TEXT NOT NULL,
    tenant_id  TEXT NOT NULL,
    at         TEXT NOT NULL,
    expires_at TEXT NOT NULL
) STRICT;
CREATE INDEX revocations_by_expiry ON revocations (expires_at);
