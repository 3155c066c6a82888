-- The auth service: tenant plans, users, refresh tokens, JWT signing keys, revocations,
-- and API keys with roles, scopes, expiry and last use. Existing keys keep their role
-- (admin) and get every scope ('*').

ALTER TABLE tenants ADD COLUMN plan text NOT NULL DEFAULT 'standard';

ALTER TABLE api_keys
    ADD COLUMN scopes text NOT NULL DEFAULT '*',
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN last_used_at timestamptz,
    ADD CONSTRAINT api_keys_role
        CHECK (role IN ('viewer', 'member', 'admin', 'owner', 'platform_admin'));

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    tenant_id     uuid        NOT NULL REFERENCES tenants (id),
    email         text        NOT NULL,
    password_hash text        NOT NULL,
    role          text        NOT NULL
                  CHECK (role IN ('viewer', 'member', 'admin', 'owner', 'platform_admin')),
    created_at    timestamptz NOT NULL,
    disabled_at   timestamptz,
    UNIQUE (tenant_id, email)
);
CREATE INDEX users_by_email ON users (email);

CREATE TABLE refresh_tokens (
    id          uuid        PRIMARY KEY,
    family_id   uuid        NOT NULL,
    tenant_id   uuid        NOT NULL REFERENCES tenants (id),
    user_id     uuid        NOT NULL REFERENCES users (id),
    token_hash  text        NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_by_user ON refresh_tokens (user_id);

CREATE TABLE signing_keys (
    kid                   text        PRIMARY KEY,
    alg                   text        NOT NULL,
    encrypted_private_key bytea       NOT NULL,
    public_jwk            jsonb       NOT NULL,
    created_at            timestamptz NOT NULL,
    retire_at             timestamptz NOT NULL,
    expire_at             timestamptz NOT NULL
);

CREATE TABLE revocations (
    seq        bigserial   PRIMARY KEY,
    kind       text        NOT NULL CHECK (kind IN ('token', 'api_key', 'api_key_secret', 'user')),
    subject    text        NOT NULL,
    tenant_id  uuid        NOT NULL,
    at         timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX revocations_by_expiry ON revocations (expires_at);
