//! The running auth service of one instance: its signing keys, verifier, revocation set,
//! API key cache and login throttles, kept in step with the store.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use meridian_auth::{
    Claims, JwtError, MasterKey, Revocation, RevocationSet, Role, Scopes, Signer,
    SigningKeyMaterial, Throttle, TokenKind, Verifier, VerifierConfig,
};
use meridian_core::{ApiKeyId, TenantId, UserId};
use meridian_store::{Principal, Store, StoreError, Subject};
use parking_lot::{Mutex, RwLock};
use rand::RngCore;

/// The auth settings of an instance. Every instance of a deployment needs the same issuer,
/// audience and master key.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The `iss` of every token. When it is an `http(s)` URL it is also the base of the
    /// discovery document's URLs; otherwise they are made from the request's `Host`.
    pub issuer: String,
    /// The `aud` every token is issued for and checked against.
    pub audience: String,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// How long a signing key signs before the next one takes over.
    pub key_rotation_interval: Duration,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    pub master_key: MasterKey,
    /// How often the store is polled for revocations (the bus usually delivers first).
    pub revocation_poll: Duration,
    /// How long a verified API key is trusted without asking the store again. Revocations
    /// and rotations end it at once; this only bounds how late a key's expiry is noticed.
    pub api_key_cache_ttl: Duration,
    /// Failed logins allowed per account, and per client address, in `login_window`.
    pub login_failures_per_account: u32,
    pub login_failures_per_ip: u32,
    pub login_window: Duration,
}

impl AuthConfig {
    /// The defaults, with the given master key.
    pub fn new(master_key: MasterKey) -> Self {
        Self {
            issuer: "urn:meridian:local".to_owned(),
            audience: "meridian".to_owned(),
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            key_rotation_interval: Duration::from_secs(30 * 24 * 3600),
            leeway: Duration::from_secs(30),
            master_key,
            revocation_poll: Duration::from_millis(250),
            api_key_cache_ttl: Duration::from_secs(30),
            login_failures_per_account: 5,
            login_failures_per_ip: 50,
            login_window: Duration::from_secs(15 * 60),
        }
    }

    /// Why the settings cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        let horizon = meridian_store::SUBJECT_REVOCATION_HORIZON
            .to_std()
            .unwrap_or(Duration::MAX);
        if self.access_token_ttl < Duration::from_secs(30) || self.access_token_ttl > horizon {
            return Err("MERIDIAN_AUTH_ACCESS_TOKEN_TTL must be between 30s and 24h".into());
        }
        if self.refresh_token_ttl < self.access_token_ttl {
            return Err(
                "MERIDIAN_AUTH_REFRESH_TOKEN_TTL must not be shorter than the access token TTL"
                    .into(),
            );
        }
        if self.key_rotation_interval < Duration::from_secs(60) {
            return Err("MERIDIAN_AUTH_KEY_ROTATION must be at least 1 minute".into());
        }
        if self.leeway > Duration::from_secs(300) {
            return Err("MERIDIAN_AUTH_LEEWAY must be at most 5 minutes".into());
        }
        if self.issuer.trim().is_empty() || self.audience.trim().is_empty() {
            return Err("MERIDIAN_AUTH_ISSUER and MERIDIAN_AUTH_AUDIENCE must not be empty".into());
        }
        if self.revocation_poll.is_zero() {
            return Err("MERIDIAN_AUTH_REVOCATION_POLL must be more than zero".into());
        }
        Ok(())
    }
}

/// Why a bearer credential was refused (logged; the client sees one `401`).
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error("the token has been revoked")]
    Revoked,
    #[error("the API key is unknown, expired or revoked")]
    UnknownKey,
    #[error("the token's claims are not usable: {0}")]
    BadClaims(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct CachedKey {
    principal: Principal,
    /// The revocation set's seq when verification began: a later revocation or rotation of
    /// the key makes the entry stale.
    seq: i64,
    until: Instant,
}

/// A token pair as the token endpoint returns it.
#[derive(Debug)]
pub struct IssuedTokens {
    pub access_token: String,
    pub expires_in: u64,
    pub scope: String,
    pub refresh_token: Option<String>,
}

pub struct AuthService {
    store: Arc<dyn Store>,
    config: AuthConfig,
    verifier: Verifier,
    signer: RwLock<Option<Arc<Signer>>>,
    jwks: RwLock<Arc<serde_json::Value>>,
    revocations: RevocationSet,
    api_keys: RwLock<HashMap<Box<str>, CachedKey>>,
    last_used: Mutex<HashMap<ApiKeyId, Instant>>,
    last_key_reload: Mutex<Option<Instant>>,
    pub(crate) account_throttle: Throttle,
    pub(crate) ip_throttle: Throttle,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("issuer", &self.config.issuer)
            .field("revocations", &self.revocations)
            .finish_non_exhaustive()
    }
}

const API_KEY_CACHE_CAPACITY: usize = 100_000;
const TOUCH_EVERY: Duration = Duration::from_secs(60);

fn unix_now() -> i64 {
    meridian_core::now().timestamp()
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The hex SHA-256 of a refresh token: only this is stored.
pub fn refresh_token_hash(token: &str) -> String {
    meridian_store::hash_secret(token)
}

impl AuthService {
    /// Seals webhook secrets at rest under the same master key as the signing keys.
    pub fn webhook_secrets(&self) -> meridian_notify::SecretSealer {
        meridian_notify::SecretSealer::new(self.config.master_key.clone())
    }

    /// Loads the signing keys (making the first one if there is none) and the revocations,
    /// and starts the background loop that keeps them current. The loop ends when the last
    /// handle is dropped.
    pub async fn start(store: Arc<dyn Store>, config: AuthConfig) -> Result<Arc<Self>, String> {
        config.validate()?;
        let service = Arc::new(Self::new(store, config));
        service
            .sync_revocations()
            .await
            .map_err(|e| format!("cannot load revocations: {e}"))?;
        service.ensure_signing_key().await?;
        let weak = Arc::downgrade(&service);
        let poll = service.config.revocation_poll;
        tokio::spawn(background(weak, poll));
        Ok(service)
    }

    fn new(store: Arc<dyn Store>, config: AuthConfig) -> Self {
        let verifier = Verifier::new(VerifierConfig {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_secs: config.leeway.as_secs() as i64,
            cache_capacity: 100_000,
        });
        let window = config.login_window;
        Self {
            account_throttle: Throttle::new(config.login_failures_per_account, window),
            ip_throttle: Throttle::new(config.login_failures_per_ip, window),
            store,
            verifier,
            signer: RwLock::new(None),
            jwks: RwLock::new(Arc::new(serde_json::json!({ "keys": [] }))),
            revocations: RevocationSet::new(),
            api_keys: RwLock::new(HashMap::new()),
            last_used: Mutex::new(HashMap::new()),
            last_key_reload: Mutex::new(None),
            config,
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The public keys, as served at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Arc<serde_json::Value> {
        self.jwks.read().clone()
    }

    // --- signing keys ---

    /// Makes a new signing key current and retires the others from signing (they stay
    /// published until their tokens have expired). Returns the new kid.
    pub async fn rotate_signing_key(
        store: &dyn Store,
        config: &AuthConfig,
    ) -> Result<String, StoreError> {
        let now = meridian_core::now();
        let material = SigningKeyMaterial::generate();
        let retire_at = now + to_chrono(config.key_rotation_interval);
        let expire_at = retire_at + to_chrono(config.access_token_ttl + config.leeway);
        let stored = material.seal(&config.master_key, now, retire_at, expire_at);
        store.add_signing_key(&stored, Some(now)).await?;
        tracing::info!(kid = %material.kid, "signing key rotated");
        Ok(material.kid)
    }

    /// Rotates now, and reloads this instance's keys.
    pub async fn rotate_now(&self) -> Result<String, String> {
        let kid = Self::rotate_signing_key(self.store.as_ref(), &self.config)
            .await
            .map_err(|e| e.to_string())?;
        self.reload_keys().await?;
        Ok(kid)
    }

    /// Reloads the keys from the store; if none is signing any more, rotates.
    async fn ensure_signing_key(&self) -> Result<(), String> {
        self.reload_keys().await?;
        if self.signer.read().is_none() {
            Self::rotate_signing_key(self.store.as_ref(), &self.config)
                .await
                .map_err(|e| format!("cannot create a signing key: {e}"))?;
            self.reload_keys().await?;
        }
        Ok(())
    }

    async fn reload_keys(&self) -> Result<(), String> {
        let keys = self
            .store
            .signing_keys()
            .await
            .map_err(|e| format!("cannot load signing keys: {e}"))?;
        let now = meridian_core::now();
        let mut public = Vec::new();
        let mut jwks = Vec::new();
        let mut current = None;
        for k in &keys {
            let vk = k.verifying_key().map_err(|e| e.to_string())?;
            public.push((k.kid.clone(), vk));
            jwks.push(k.public_jwk.clone());
            if k.created_at <= now && now < k.retire_at {
                // Oldest first: the newest signing key wins.
                current = Some(k);
            }
        }
        let signer = match current {
            Some(k) => Some(Arc::new(k.signer(&self.config.master_key).map_err(
                |e| format!("{e}; is MERIDIAN_AUTH_MASTER_KEY the one the keys were made with?"),
            )?)),
            None => None,
        };
        self.verifier.set_keys(public);
        *self.jwks.write() = Arc::new(serde_json::json!({ "keys": jwks }));
        *self.signer.write() = signer;
        *self.last_key_reload.lock() = Some(Instant::now());
        Ok(())
    }

    // --- revocations ---

    /// Applies revocations that arrived by the bus (in any order).
    pub fn apply_revocations(&self, revocations: &[Revocation]) {
        self.revocations.apply_unordered(revocations);
    }

    /// Reads revocations newer than the ones applied from the store.
    pub async fn sync_revocations(&self) -> Result<(), StoreError> {
        let after = self.revocations.max_seq();
        let new = self.store.revocations_after(after).await?;
        if !new.is_empty() {
            tracing::debug!(count = new.len(), "applied revocations from the store");
            self.revocations.apply(&new);
        }
        Ok(())
    }

    // --- verifying ---

    /// The principal of a bearer token: a JWT (three dot-separated parts) or an API key.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, Rejection> {
        if token.starts_with("mk_") {
            self.authenticate_api_key(token).await
        } else {
            self.authenticate_jwt(token).await
        }
    }

    async fn authenticate_jwt(&self, token: &str) -> Result<Principal, Rejection> {
        let now = unix_now();
        let claims = match self.verifier.verify(token, now) {
            Err(JwtError::UnknownKey) if self.may_reload_keys() => {
                // Another instance may have rotated: look once more.
                self.reload_keys()
                    .await
                    .map_err(|e| Rejection::Store(StoreError::Unavailable(e)))?;
                self.verifier.verify(token, now)?
            }
            other => other?,
        };
        if self
            .revocations
            .token_revoked(&claims.jti, &claims.sub, claims.iat)
        {
            return Err(Rejection::Revoked);
        }
        principal_of(&claims)
    }

    fn may_reload_keys(&self) -> bool {
        self.last_key_reload
            .lock()
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
    }

    async fn authenticate_api_key(&self, token: &str) -> Result<Principal, Rejection> {
        if let Some(p) = self.cached_key(token) {
            return Ok(p);
        }
        let seq = self.revocations.max_seq();
        let principal = self
            .store
            .authenticate(token)
            .await?
            .ok_or(Rejection::UnknownKey)?;
        if let Subject::ApiKey(id) = principal.subject {
            self.touch(id);
            let mut cache = self.api_keys.write();
            if cache.len() >= API_KEY_CACHE_CAPACITY {
                let now = Instant::now();
                cache.retain(|_, e| e.until > now);
                if cache.len() >= API_KEY_CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(
                token.into(),
                CachedKey {
                    principal: principal.clone(),
                    seq,
                    until: Instant::now() + self.config.api_key_cache_ttl,
                },
            );
        }
        Ok(principal)
    }

    fn cached_key(&self, token: &str) -> Option<Principal> {
        let cache = self.api_keys.read();
        let entry = cache.get(token)?;
        let Subject::ApiKey(id) = entry.principal.subject else {
            return None;
        };
        if entry.until <= Instant::now()
            || self
                .revocations
                .key_changed_since(&id.to_string(), entry.seq)
        {
            return None;
        }
        self.touch(id);
        Some(entry.principal.clone())
    }

    /// Records the key's use, at most about once a minute per key, off the request path.
    fn touch(&self, id: ApiKeyId) {
        let now = Instant::now();
        {
            let mut last = self.last_used.lock();
            if last
                .get(&id)
                .is_some_and(|t| now.duration_since(*t) < TOUCH_EVERY)
            {
                return;
            }
            if last.len() > API_KEY_CACHE_CAPACITY {
                last.clear();
            }
            last.insert(id, now);
        }
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch_api_key(id, meridian_core::now()).await {
                tracing::warn!(api_key.id = %id, error = %e, "cannot record the key's last use");
            }
        });
    }

    /// Verifies a token's signature and issuer for revocation, tolerating expiry.
    pub(crate) fn claims_for_revocation(&self, token: &str) -> Option<Arc<Claims>> {
        // An expired token needs no revocation; anything else that verifies does.
        self.verifier.verify(token, unix_now()).ok()
    }

    /// Revokes one access token everywhere.
    pub async fn revoke_access_token(&self, claims: &Claims) -> Result<(), StoreError> {
        let tenant: TenantId = claims
            .tid
            .parse()
            .map_err(|_| StoreError::Internal("token without a tenant".into()))?;
        let exp = chrono::DateTime::from_timestamp(claims.exp, 0)
            .unwrap_or_else(meridian_core::now)
            + to_chrono(self.config.leeway);
        let r = self.store.revoke_token(tenant, &claims.jti, exp).await?;
        self.revocations.apply_unordered(&[r]);
        self.sync_revocations().await
    }

    // --- issuing ---

    fn sign(&self, claims: &Claims) -> Result<String, StoreError> {
        let signer = self.signer.read().clone().ok_or_else(|| {
            StoreError::Unavailable("no signing key is current; rotate the keys".into())
        })?;
        Ok(signer.sign(claims))
    }

    /// An access token for a principal.
    pub fn issue_access_token(
        &self,
        tenant: TenantId,
        subject: Subject,
        role: Role,
        scopes: Scopes,
        plan: &str,
    ) -> Result<IssuedTokens, StoreError> {
        let now = unix_now();
        let ttl = self.config.access_token_ttl.as_secs();
        let (sub, kind) = match subject {
            Subject::ApiKey(k) => (k.to_string(), TokenKind::ApiKey),
            Subject::User(u) => (u.to_string(), TokenKind::User),
        };
        let scopes = scopes.intersect(role.permissions());
        let claims = Claims {
            iss: self.config.issuer.clone(),
            sub,
            aud: self.config.audience.clone(),
            exp: now + ttl as i64,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::now_v7().simple().to_string(),
            tid: tenant.to_string(),
            role,
            scope: scopes.to_claim(),
            plan: plan.to_owned(),
            kind,
        };
        Ok(IssuedTokens {
            access_token: self.sign(&claims)?,
            expires_in: ttl,
            scope: claims.scope,
            refresh_token: None,
        })
    }

    /// A new refresh token (shown once) and the record to store for it.
    pub fn new_refresh_token(
        &self,
        tenant: TenantId,
        user: UserId,
        family: Option<uuid::Uuid>,
    ) -> (String, meridian_store::NewRefreshToken) {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = format!(
            "mr_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let record = meridian_store::NewRefreshToken {
            token_hash: refresh_token_hash(&token),
            family_id: family.unwrap_or_else(uuid::Uuid::now_v7),
            tenant_id: tenant,
            user_id: user,
            expires_at: meridian_core::now() + to_chrono(self.config.refresh_token_ttl),
        };
        (token, record)
    }
}

fn principal_of(claims: &Claims) -> Result<Principal, Rejection> {
    let tenant_id = claims
        .tid
        .parse()
        .map_err(|_| Rejection::BadClaims("tid is not a tenant id"))?;
    let subject = match claims.kind {
        TokenKind::ApiKey => Subject::ApiKey(
            claims
                .sub
                .parse()
                .map_err(|_| Rejection::BadClaims("sub is not a key id"))?,
        ),
        TokenKind::User => Subject::User(
            claims
                .sub
                .parse()
                .map_err(|_| Rejection::BadClaims("sub is not a user id"))?,
        ),
    };
    let scopes = Scopes::parse(&claims.scope).map_err(|_| Rejection::BadClaims("scope"))?;
    Ok(Principal {
        tenant_id,
        subject,
        role: claims.role,
        scopes,
        plan: claims.plan.clone(),
    })
}

impl AuthService {
    /// Applies revocations as the bus delivers them (`platform.auth.revoked`, written to
    /// the outbox with each revocation), through an ephemeral subscription of this instance
    /// alone, so every instance gets every revocation. The store poll stays as the backstop
    /// for a bus that is down. Ends when the service is dropped.
    pub fn listen(self: &Arc<Self>, bus: Arc<dyn meridian_bus::Bus>, deployment: &str) {
        let weak = Arc::downgrade(self);
        let pattern = format!("deployment.{deployment}.platform.auth.revoked");
        tokio::spawn(async move {
            let Ok(pattern) = meridian_bus::TopicPattern::parse(&pattern) else {
                tracing::error!(pattern, "invalid revocation topic pattern");
                return;
            };
            let consumer = format!("auth-revocations-{}", uuid::Uuid::now_v7().simple());
            loop {
                if weak.strong_count() == 0 {
                    return;
                }
                let mut sub = match bus
                    .subscribe(
                        &pattern,
                        meridian_bus::SubscribeOptions::ephemeral(&consumer),
                    )
                    .await
                {
                    Ok(sub) => sub,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot subscribe to revocations; polling meanwhile");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                loop {
                    let delivery = tokio::select! {
                        d = sub.next() => d,
                        () = tokio::time::sleep(Duration::from_secs(5)) => {
                            if weak.strong_count() == 0 {
                                return;
                            }
                            continue;
                        }
                    };
                    let delivery = match delivery {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::warn!(error = %e, "revocation subscription ended; resubscribing");
                            break;
                        }
                    };
                    let Some(service) = weak.upgrade() else {
                        return;
                    };
                    match serde_json::from_value::<Revocation>(
                        delivery.message.envelope().data.clone(),
                    ) {
                        Ok(r) => service.apply_revocations(&[r]),
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring a malformed revocation event")
                        }
                    }
                    drop(service);
                    if let Err(e) = delivery.ack().await {
                        tracing::debug!(error = %e, "cannot ack a revocation event");
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
}

/// Polls the store for revocations, reloads keys now and then, and rotates when no key is
/// signing any more. Ends when the service is dropped.
async fn background(service: Weak<AuthService>, poll: Duration) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_keys = Instant::now();
    let mut last_prune = Instant::now();
    loop {
        tick.tick().await;
        let Some(s) = service.upgrade() else {
            return;
        };
        if let Err(e) = s.sync_revocations().await {
            tracing::warn!(error = %e, "cannot poll revocations");
        }
        if last_keys.elapsed() >= Duration::from_secs(30) {
            last_keys = Instant::now();
            if let Err(e) = s.ensure_signing_key().await {
                tracing::warn!(error = %e, "cannot refresh signing keys");
            }
        }
        if last_prune.elapsed() >= Duration::from_secs(60) {
            last_prune = Instant::now();
            s.revocations.prune(unix_now());
        }
    }
}
