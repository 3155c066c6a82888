//! The revocation set: what every instance checks on every request, cached token or not.
//!
//! Revocations live in the store (durable, with a sequence number) and are applied here as
//! they arrive, from the bus or from polling the store. Three questions are answered:
//! - is this access token (by `jti`) revoked?
//! - is this subject (user or API key) revoked for tokens issued at or before a time?
//! - has this API key been revoked or rotated since a given sequence number (so that an
//!   API key verified earlier must be verified again)?

use std::collections::HashMap;

use meridian_core::{TenantId, Timestamp};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationKind {
    /// One access token, by `jti`.
    Token,
    /// An API key: its secret and every token issued to it until now.
    ApiKey,
    /// An API key's old secret (after a rotation): tokens stay valid, the secret does not.
    ApiKeySecret,
    /// A user: every token issued to them until now.
    User,
}

impl RevocationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Token => "token",
            RevocationKind::ApiKey => "api_key",
            RevocationKind::ApiKeySecret => "api_key_secret",
            RevocationKind::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            RevocationKind::Token,
            RevocationKind::ApiKey,
            RevocationKind::ApiKeySecret,
            RevocationKind::User,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One stored revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Store order; assigned by the store.
    pub seq: i64,
    pub kind: RevocationKind,
    /// The `jti`, API key id or user id.
    pub subject: String,
    pub tenant_id: TenantId,
    pub at: Timestamp,
    /// After this, nothing it revokes could still be accepted: it can be forgotten.
    pub expires_at: Timestamp,
}

#[derive(Default)]
struct Inner {
    /// jti → expiry (unix seconds).
    tokens: HashMap<String, i64>,
    /// user or key id → (revoked at, unix seconds; seq; expiry).
    subjects: HashMap<String, (i64, i64, i64)>,
    /// key id → (seq of the latest revocation or rotation; expiry).
    key_changes: HashMap<String, (i64, i64)>,
    max_seq: i64,
}

/// The in-memory set. Cheap to query (one read lock, one hash lookup per question).
#[derive(Default)]
pub struct RevocationSet {
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for RevocationSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.inner.read();
        f.debug_struct("RevocationSet")
            .field("tokens", &i.tokens.len())
            .field("subjects", &i.subjects.len())
            .field("max_seq", &i.max_seq)
            .finish()
    }
}

impl RevocationSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies revocations read from the store in seq order, up to and including the last;
    /// applying one twice changes nothing.
    pub fn apply<'a>(&self, revocations: impl IntoIterator<Item = &'a Revocation>) {
        self.apply_inner(revocations, true);
    }

    /// Applies revocations that arrived out of band (the bus), in any order: they take
    /// effect, but [`RevocationSet::max_seq`] does not move, so the next read from the
    /// store still fetches anything before them.
    pub fn apply_unordered<'a>(&self, revocations: impl IntoIterator<Item = &'a Revocation>) {
        self.apply_inner(revocations, false);
    }

    fn apply_inner<'a>(
        &self,
        revocations: impl IntoIterator<Item = &'a Revocation>,
        advance: bool,
    ) {
        let mut i = self.inner.write();
        for r in revocations {
            let exp = r.expires_at.timestamp();
            match r.kind {
                RevocationKind::Token => {
                    i.tokens.insert(r.subject.clone(), exp);
                }
                RevocationKind::ApiKey | RevocationKind::User => {
                    let at = r.at.timestamp();
                    let e = i
                        .subjects
                        .entry(r.subject.clone())
                        .or_insert((at, r.seq, exp));
                    *e = (e.0.max(at), e.1.max(r.seq), e.2.max(exp));
                    if r.kind == RevocationKind::ApiKey {
                        bump(&mut i.key_changes, &r.subject, r.seq, exp);
                    }
                }
                RevocationKind::ApiKeySecret => bump(&mut i.key_changes, &r.subject, r.seq, exp),
            }
            if advance {
                i.max_seq = i.max_seq.max(r.seq);
            }
        }
    }

    /// The highest sequence number applied.
    pub fn max_seq(&self) -> i64 {
        self.inner.read().max_seq
    }

    /// Whether an access token with this `jti`, subject and issue time (unix seconds) is
    /// revoked. A token issued in the same second as its subject's revocation counts as
    /// revoked.
    pub fn token_revoked(&self, jti: &str, sub: &str, iat: i64) -> bool {
        let i = self.inner.read();
        i.tokens.contains_key(jti) || i.subjects.get(sub).is_some_and(|(at, _, _)| iat <= *at)
    }

    /// Whether the API key was revoked or rotated after the set had reached `seq`.
    pub fn key_changed_since(&self, key: &str, seq: i64) -> bool {
        self.inner
            .read()
            .key_changes
            .get(key)
            .is_some_and(|(s, _)| *s > seq)
    }

    /// Forgets what has expired (`now` in unix seconds).
    pub fn prune(&self, now: i64) {
        let mut i = self.inner.write();
        i.tokens.retain(|_, exp| *exp > now);
        i.subjects.retain(|_, (_, _, exp)| *exp > now);
        i.key_changes.retain(|_, (_, exp)| *exp > now);
    }

    pub fn len(&self) -> usize {
        let i = self.inner.read();
        i.tokens.len() + i.subjects.len() + i.key_changes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn bump(map: &mut HashMap<String, (i64, i64)>, key: &str, seq: i64, exp: i64) {
    let e = map.entry(key.to_owned()).or_insert((seq, exp));
    *e = (e.0.max(seq), e.1.max(exp));
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64) -> Timestamp {
        chrono::Utc.timestamp_opt(secs, 0).unwrap()
    }

    fn rev(seq: i64, kind: RevocationKind, subject: &str, when: i64) -> Revocation {
        Revocation {
            seq,
            kind,
            subject: subject.into(),
            tenant_id: TenantId::new(),
            at: at(when),
            expires_at: at(when + 900),
        }
    }

    #[test]
    fn revocations_answer_each_question() {
        let set = RevocationSet::new();
        set.apply(&[
            rev(1, RevocationKind::Token, "jti-1", 100),
            rev(2, RevocationKind::User, "user-1", 200),
            rev(3, RevocationKind::ApiKeySecret, "key-1", 300),
            rev(4, RevocationKind::ApiKey, "key-2", 300),
        ]);
        assert_eq!(set.max_seq(), 4);
        assert!(set.token_revoked("jti-1", "anyone", 50));
        assert!(!set.token_revoked("jti-2", "anyone", 50));
        assert!(set.token_revoked("jti-2", "user-1", 200));
        assert!(!set.token_revoked("jti-2", "user-1", 201));
        // A rotation does not revoke the key's tokens, a revocation does.
        assert!(!set.token_revoked("jti-3", "key-1", 10));
        assert!(set.token_revoked("jti-3", "key-2", 10));
        assert!(set.key_changed_since("key-1", 2));
        assert!(!set.key_changed_since("key-1", 3));
        assert!(set.key_changed_since("key-2", 3));
        assert!(!set.key_changed_since("key-3", 0));
        // Idempotent.
        set.apply(&[rev(2, RevocationKind::User, "user-1", 200)]);
        assert!(!set.token_revoked("jti-2", "user-1", 201));
        // Out-of-band revocations act but do not move the high-water mark.
        set.apply_unordered(&[rev(9, RevocationKind::Token, "jti-9", 100)]);
        assert!(set.token_revoked("jti-9", "anyone", 50));
        assert_eq!(set.max_seq(), 4);
        set.prune(10_000);
        assert!(set.is_empty());
        assert_eq!(set.max_seq(), 4);
    }
}
