//! The auth service through the router: the token endpoint's grants, JWT verification
//! (forged, expired, early, foreign, alg=none and key-confusion tokens are refused),
//! revocation, refresh-token rotation and reuse detection, login throttling, the JWKS and
//! discovery documents, and the permission matrix route by route.

use axum::http::{Method, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use meridian_auth::{Claims, Permission, Role, Scopes, TokenKind, permits};
use meridian_store::NewUser;
use serde_json::{Value, json};

use crate::support::{TestApp, TestResponse};

const PASSWORD: &str = "correct horse battery staple";

fn form(pairs: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn token_request(app: &TestApp, pairs: &[(&str, &str)]) -> TestResponse {
    app.call(Method::POST, "/v1/auth/token")
        .no_auth()
        .raw(Some("application/x-www-form-urlencoded"), form(pairs))
        .send()
        .await
}

/// The key id and whole token of the app's default API key.
fn key_parts(token: &str) -> (String, String) {
    let id = token.split('_').nth(1).unwrap().to_owned();
    (id, token.to_owned())
}

pub(crate) async fn add_user(app: &TestApp, email: &str, role: Role) {
    app.store
        .create_user(
            app.tenant,
            NewUser {
                email: email.into(),
                password_hash: meridian_auth::password::hash(PASSWORD),
                role,
            },
        )
        .await
        .unwrap();
}

pub(crate) async fn login(app: &TestApp, email: &str) -> Value {
    let r = token_request(
        app,
        &[
            ("grant_type", "password"),
            ("username", email),
            ("password", PASSWORD),
        ],
    )
    .await;
    r.assert_status(StatusCode::OK);
    r.json()
}

async fn status_with(app: &TestApp, token: &str, method: Method, uri: &str) -> StatusCode {
    app.call(method, uri).token(token).send().await.status
}

/// A signer holding the app's current private key, to mint tokens with chosen claims.
async fn app_signer(app: &TestApp) -> meridian_auth::Signer {
    let keys = app.store.signing_keys().await.unwrap();
    keys.last().unwrap().signer(&app.master_key).unwrap()
}

fn claims_for(app: &TestApp, now: i64) -> Claims {
    Claims {
        iss: app.auth.config().issuer.clone(),
        sub: meridian_core::UserId::new().to_string(),
        aud: app.auth.config().audience.clone(),
        exp: now + 600,
        nbf: now - 1,
        iat: now - 1,
        jti: uuid::Uuid::now_v7().to_string(),
        tid: app.tenant.to_string(),
        role: Role::Owner,
        scope: Scopes::ALL.to_claim(),
        plan: "standard".into(),
        kind: TokenKind::User,
    }
}

#[tokio::test]
async fn client_credentials_give_a_jwt_that_works_until_it_is_revoked() {
    let app = TestApp::new().await;
    let (id, token) = key_parts(&app.token);
    let r = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &token),
        ],
    )
    .await;
    r.assert_status(StatusCode::OK);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert!(
        body.get("refresh_token").is_none(),
        "no refresh token for machine clients"
    );
    let jwt = body["access_token"].as_str().unwrap().to_owned();
    // The header names the algorithm and the key.
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(jwt.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA");
    let kid = header["kid"].as_str().unwrap();
    let jwks = app
        .call(Method::GET, "/.well-known/jwks.json")
        .no_auth()
        .send()
        .await
        .json();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid)
    );

    assert_eq!(
        status_with(&app, &jwt, Method::GET, "/v1/products").await,
        StatusCode::OK
    );
    // HTTP Basic client authentication works too; a wrong secret is invalid_client.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{token}"));
    app.call(Method::POST, "/v1/auth/token")
        .no_auth()
        .header("authorization", &format!("Basic {basic}"))
        .raw(
            Some("application/x-www-form-urlencoded"),
            "grant_type=client_credentials",
        )
        .send()
        .await
        .assert_status(StatusCode::OK);
    let p = token_request(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", "nope"),
        ],
    )
    .await
    .problem(StatusCode::UNAUTHORIZED, "invalid_client");
    assert_eq!(p["error"], "invalid_client");

    // RFC 7009 revocation of the access token: refused at once.
    app.call(Method::POST, "/v1/auth/revoke")
        .no_auth()
        .raw(
            Some("application/x-www-form-urlencoded"),
            form(&[("token", &jwt)]),
        )
        .send()
        .await
        .assert_status(StatusCode::OK);
    app.call(Method::GET, "/v1/products")
        .token(&jwt)
        .send()
        .await
        .problem(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn forged_expired_early_foreign_none_and_confused_tokens_are_refused() {
    let app = TestApp::new().await;
    let now = chrono::Utc::now().timestamp();
    let signer = app_signer(&app).await;
    let good = signer.sign(&claims_for(&app, now));
    assert_eq!(
        status_with(&app, &good, Method::GET, "/v1/products").await,
        StatusCode::OK
    );

    let kid = signer.kid().to_owned();
    let other_key =
        meridian_auth::Signer::new(kid.clone(), ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims_for(&app, now)).unwrap());
    let b64 = |v: Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap());
    let public_x = app.auth.jwks()["keys"][0]["x"].as_str().unwrap().to_owned();
    let hs256 = {
        use hmac_sha256::hmac;
        let h = b64(json!({"alg": "HS256", "kid": kid, "typ": "JWT"}));
        let input = format!("{h}.{payload}");
        let mac = hmac(public_x.as_bytes(), input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac))
    };
    let bad = [
        ("forged", other_key.sign(&claims_for(&app, now))),
        (
            "expired",
            signer.sign(&Claims {
                exp: now - 120,
                nbf: now - 1000,
                iat: now - 1000,
                ..claims_for(&app, now)
            }),
        ),
        (
            "not yet valid",
            signer.sign(&Claims {
                nbf: now + 600,
                ..claims_for(&app, now)
            }),
        ),
        (
            "wrong audience",
            signer.sign(&Claims {
                aud: "someone-else".into(),
                ..claims_for(&app, now)
            }),
        ),
        (
            "wrong issuer",
            signer.sign(&Claims {
                iss: "https://evil.example".into(),
                ..claims_for(&app, now)
            }),
        ),
        (
            "alg none",
            format!("{}.{payload}.", b64(json!({"alg": "none", "kid": kid}))),
        ),
        (
            "alg none, no kid",
            format!("{}.{payload}.", b64(json!({"alg": "none"}))),
        ),
        ("HS256 with the public key", hs256),
        (
            "unknown kid",
            meridian_auth::Signer::new("nope", ed25519_dalek::SigningKey::from_bytes(&[7; 32]))
                .sign(&claims_for(&app, now)),
        ),
        ("tampered", {
            let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
            parts[1] = URL_SAFE_NO_PAD.encode(
                serde_json::to_vec(&Claims {
                    tid: meridian_core::TenantId::new().to_string(),
                    ..claims_for(&app, now)
                })
                .unwrap(),
            );
            parts.join(".")
        }),
    ];
    for (what, token) in bad {
        let r = app
            .call(Method::GET, "/v1/products")
            .token(&token)
            .send()
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
        assert_eq!(r.json()["code"], "unauthorized", "{what}");
    }
}

/// A tiny HMAC-SHA256 for the key-confusion token.
mod hmac_sha256 {
    use sha2::{Digest, Sha256};
    pub fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
        let mut k = [0u8; 64];
        k[..key.len().min(64)].copy_from_slice(&key[..key.len().min(64)]);
        let inner: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let ih = Sha256::digest([inner.as_slice(), msg].concat());
        Sha256::digest([outer.as_slice(), ih.as_slice()].concat()).to_vec()
    }
}

#[tokio::test]
async fn password_login_refresh_rotation_and_reuse_revokes_the_family() {
    let app = TestApp::new().await;
    add_user(&app, "Ada@Example.com", Role::Member).await;
    let first = login(&app, "ada@example.com").await;
    let access = first["access_token"].as_str().unwrap();
    assert_eq!(
        status_with(&app, access, Method::GET, "/v1/orders").await,
        StatusCode::OK
    );
    let r1 = first["refresh_token"].as_str().unwrap().to_owned();

    let refresh = |t: String| {
        let app = &app;
        async move {
            token_request(
                app,
                &[("grant_type", "refresh_token"), ("refresh_token", &t)],
            )
            .await
        }
    };
    let second = refresh(r1.clone()).await;
    second.assert_status(StatusCode::OK);
    let r2 = second.json()["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2, "refresh tokens rotate");

    // Replaying the spent r1 is refused and revokes the family, r2 included.
    let p = refresh(r1)
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(p["error"], "invalid_grant");
    let p = refresh(r2)
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(p["error"], "invalid_grant");

    // A wrong password is invalid_grant; an unknown grant type is named.
    token_request(
        &app,
        &[
            ("grant_type", "password"),
            ("username", "ada@example.com"),
            ("password", "wrong password!"),
        ],
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "invalid_grant");
    let p = token_request(&app, &[("grant_type", "implicit")])
        .await
        .problem(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    assert_eq!(p["error"], "unsupported_grant_type");
    // JSON bodies are accepted as well.
    app.call(Method::POST, "/v1/auth/token")
        .no_auth()
        .json(
            &json!({"grant_type": "password", "username": "ada@example.com", "password": PASSWORD}),
        )
        .send()
        .await
        .assert_status(StatusCode::OK);
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account() {
    let app = TestApp::new().await;
    add_user(&app, "bob@example.com", Role::Viewer).await;
    for _ in 0..5 {
        token_request(
            &app,
            &[
                ("grant_type", "password"),
                ("username", "bob@example.com"),
                ("password", "not the password"),
            ],
        )
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    // Even the right password is refused now, with a Retry-After.
    let r = token_request(
        &app,
        &[
            ("grant_type", "password"),
            ("username", "bob@example.com"),
            ("password", PASSWORD),
        ],
    )
    .await;
    r.problem(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry: u64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0);
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address() {
    let app = TestApp::with_auth(|c| {
        c.login_failures_per_ip = 3;
        c.login_failures_per_account = 100;
    })
    .await;
    add_user(&app, "carol@example.com", Role::Viewer).await;
    // Three failures on three different accounts, from one address.
    for who in ["a@example.com", "b@example.com", "c@example.com"] {
        token_request(
            &app,
            &[
                ("grant_type", "password"),
                ("username", who),
                ("password", "guess guess guess"),
            ],
        )
        .await
        .problem(StatusCode::BAD_REQUEST, "invalid_grant");
    }
    let r = token_request(
        &app,
        &[
            ("grant_type", "password"),
            ("username", "carol@example.com"),
            ("password", PASSWORD),
        ],
    )
    .await;
    r.problem(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(r.headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn deleting_a_user_revokes_their_tokens_at_once() {
    let app = TestApp::new().await;
    let r = app
        .post(
            "/v1/users",
            json!({"email": "eve@example.com", "role": "member"}),
        )
        .await;
    r.assert_status(StatusCode::CREATED);
    let body = r.json();
    let generated = body["password"].as_str().unwrap().to_owned();
    let id = body["id"].as_str().unwrap().to_owned();
    let tokens = token_request(
        &app,
        &[
            ("grant_type", "password"),
            ("username", "eve@example.com"),
            ("password", &generated),
        ],
    )
    .await
    .json();
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        status_with(&app, access, Method::GET, "/v1/orders").await,
        StatusCode::OK
    );
    app.delete(&format!("/v1/users/{id}"))
        .await
        .assert_status(StatusCode::NO_CONTENT);
    assert_eq!(
        status_with(&app, access, Method::GET, "/v1/orders").await,
        StatusCode::UNAUTHORIZED
    );
    let refresh = tokens["refresh_token"].as_str().unwrap();
    token_request(
        &app,
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
    )
    .await
    .problem(StatusCode::BAD_REQUEST, "invalid_grant");
    let listed = app.get(&format!("/v1/users/{id}")).await.json();
    assert!(listed["disabled_at"].is_string());
}

#[tokio::test]
async fn api_keys_have_scopes_expiry_rotation_and_last_use() {
    let app = TestApp::new().await;
    let r = app
        .post(
            "/v1/api-keys",
            json!({"name": "reader", "role": "member", "scopes": ["orders:read"]}),
        )
        .await;
    r.assert_status(StatusCode::CREATED);
    let created = r.json();
    let reader = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["scopes"], json!(["orders:read"]));
    assert_eq!(
        status_with(&app, &reader, Method::GET, "/v1/orders").await,
        StatusCode::OK
    );
    assert_eq!(
        status_with(&app, &reader, Method::GET, "/v1/products").await,
        StatusCode::FORBIDDEN
    );
    // A scope cannot widen the role: a viewer key with write scopes still cannot write.
    let viewer = app
        .post(
            "/v1/api-keys",
            json!({"name": "v", "role": "viewer", "scopes": ["*"]}),
        )
        .await
        .json();
    let viewer = viewer["token"].as_str().unwrap();
    let p = app
        .call(Method::POST, "/v1/products")
        .token(viewer)
        .json(&json!({"sku": "S", "name": "n", "price": {"amount": 1, "currency": "USD"}}))
        .send()
        .await
        .problem(StatusCode::FORBIDDEN, "forbidden");
    assert!(p["detail"].as_str().unwrap().contains("viewer"));
    // A member cannot mint an admin key (nor manage keys at all).
    let member = app
        .post("/v1/api-keys", json!({"name": "m", "role": "member"}))
        .await
        .json();
    let member = member["token"].as_str().unwrap();
    app.call(Method::POST, "/v1/api-keys")
        .token(member)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .problem(StatusCode::FORBIDDEN, "forbidden");

    // last_used_at is recorded (off the request path).
    let mut used = Value::Null;
    for _ in 0..100 {
        let list = app.get("/v1/api-keys").await.json();
        used = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id.as_str())
            .unwrap()["last_used_at"]
            .clone();
        if used.is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(used.is_string(), "last_used_at was never recorded");

    // Rotation: a new secret for the same key; the old one stops working at once.
    let rotated = app
        .post(&format!("/v1/api-keys/{id}/rotate"), json!({}))
        .await;
    rotated.assert_status(StatusCode::OK);
    let new_token = rotated.json()["token"].as_str().unwrap().to_owned();
    assert_ne!(new_token, reader);
    assert_eq!(
        status_with(&app, &reader, Method::GET, "/v1/orders").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_with(&app, &new_token, Method::GET, "/v1/orders").await,
        StatusCode::OK
    );

    // An expiry in the past is refused; an expired key authenticates nothing.
    app.post(
        "/v1/api-keys",
        json!({"name": "old", "expires_at": "2000-01-01T00:00:00Z"}),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(300)).to_rfc3339();
    let short = app
        .post("/v1/api-keys", json!({"name": "short", "expires_at": soon}))
        .await
        .json();
    let short = short["token"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        status_with(&app, &short, Method::GET, "/v1/orders").await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn discovery_and_jwks_describe_the_issuer() {
    let app = TestApp::new().await;
    let d = app
        .call(Method::GET, "/.well-known/openid-configuration")
        .no_auth()
        .send()
        .await
        .json();
    assert_eq!(d["issuer"], app.auth.config().issuer.as_str());
    assert!(
        d["jwks_uri"]
            .as_str()
            .unwrap()
            .ends_with("/.well-known/jwks.json")
    );
    assert!(
        d["token_endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/v1/auth/token")
    );
    let jwks = app
        .call(Method::GET, "/.well-known/jwks.json")
        .no_auth()
        .send()
        .await
        .json();
    let k = &jwks["keys"][0];
    assert_eq!(
        (k["kty"].as_str(), k["crv"].as_str(), k["alg"].as_str()),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );
    assert!(k.get("d").is_none(), "no private part");

    // Rotation on demand (a platform admin): the new kid signs, the old stays published.
    let before = jwks["keys"].as_array().unwrap().len();
    app.auth.rotate_now().await.unwrap();
    let jwks = app
        .call(Method::GET, "/.well-known/jwks.json")
        .no_auth()
        .send()
        .await
        .json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), before + 1);
}

/// One request per route, with a path that exists or not: only the permission decision is
/// looked at (403 or not).
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/v1/products", "/v1/products"),
    ("POST", "/v1/products", "/v1/products"),
    ("GET", "/v1/products/{sku}", "/v1/products/SKU-1"),
    ("PATCH", "/v1/products/{sku}", "/v1/products/SKU-1"),
    ("DELETE", "/v1/products/{sku}", "/v1/products/NOPE"),
    ("GET", "/v1/warehouses", "/v1/warehouses"),
    ("POST", "/v1/warehouses", "/v1/warehouses"),
    (
        "PUT",
        "/v1/inventory/{warehouse_code}/{sku}",
        "/v1/inventory/WH-1/SKU-1",
    ),
    (
        "POST",
        "/v1/inventory/{warehouse_code}/{sku}/adjustments",
        "/v1/inventory/WH-1/SKU-1/adjustments",
    ),
    ("GET", "/v1/inventory/{sku}", "/v1/inventory/SKU-1"),
    (
        "GET",
        "/v1/inventory/{sku}/ledger",
        "/v1/inventory/SKU-1/ledger",
    ),
    ("POST", "/v1/orders", "/v1/orders"),
    ("GET", "/v1/shipments", "/v1/shipments"),
    (
        "GET",
        "/v1/shipments/{id}",
        "/v1/shipments/0190a0a0-0000-7000-8000-000000000000",
    ),
    (
        "GET",
        "/v1/shipments/{id}/label",
        "/v1/shipments/0190a0a0-0000-7000-8000-000000000000/label",
    ),
    (
        "GET",
        "/v1/shipments/{id}/label-url",
        "/v1/shipments/0190a0a0-0000-7000-8000-000000000000/label-url",
    ),
    (
        "POST",
        "/v1/shipments/{id}/tracking",
        "/v1/shipments/0190a0a0-0000-7000-8000-000000000000/tracking",
    ),
    ("GET", "/v1/orders", "/v1/orders"),
    (
        "GET",
        "/v1/orders/{id}",
        "/v1/orders/0190a0a0-0000-7000-8000-000000000000",
    ),
    (
        "GET",
        "/v1/orders/{id}/events",
        "/v1/orders/0190a0a0-0000-7000-8000-000000000000/events",
    ),
    (
        "POST",
        "/v1/orders/{id}/cancel",
        "/v1/orders/0190a0a0-0000-7000-8000-000000000000/cancel",
    ),
    (
        "POST",
        "/v1/orders/{id}/fulfill",
        "/v1/orders/0190a0a0-0000-7000-8000-000000000000/fulfill",
    ),
    ("GET", "/v1/dead-letters", "/v1/dead-letters"),
    (
        "GET",
        "/v1/dead-letters/{id}",
        "/v1/dead-letters/0190a0a0-0000-7000-8000-000000000000",
    ),
    (
        "POST",
        "/v1/dead-letters/{id}/replay",
        "/v1/dead-letters/0190a0a0-0000-7000-8000-000000000000/replay",
    ),
    ("GET", "/v1/api-keys", "/v1/api-keys"),
    ("POST", "/v1/api-keys", "/v1/api-keys"),
    (
        "DELETE",
        "/v1/api-keys/{id}",
        "/v1/api-keys/0190a0a0-0000-7000-8000-000000000000",
    ),
    (
        "POST",
        "/v1/api-keys/{id}/rotate",
        "/v1/api-keys/0190a0a0-0000-7000-8000-000000000000/rotate",
    ),
    ("GET", "/v1/users", "/v1/users"),
    ("POST", "/v1/users", "/v1/users"),
    (
        "GET",
        "/v1/users/{id}",
        "/v1/users/0190a0a0-0000-7000-8000-000000000000",
    ),
    (
        "PATCH",
        "/v1/users/{id}",
        "/v1/users/0190a0a0-0000-7000-8000-000000000000",
    ),
    (
        "DELETE",
        "/v1/users/{id}",
        "/v1/users/0190a0a0-0000-7000-8000-000000000000",
    ),
    (
        "POST",
        "/v1/auth/signing-keys/rotate",
        "/v1/auth/signing-keys/rotate",
    ),
    ("GET", "/v1/webhooks", "/v1/webhooks"),
    ("GET", "/v1/notifications", "/v1/notifications"),
    ("GET", "/v1/templates", "/v1/templates"),
    ("POST", "/v1/templates", "/v1/templates"),
    ("POST", "/v1/templates/preview", "/v1/templates/preview"),
    (
        "GET",
        "/v1/templates/{id}",
        "/v1/templates/0190a0a0-0000-7000-8000-000000000000",
    ),
    (
        "PATCH",
        "/v1/templates/{id}",
        "/v1/templates/0190a0a0-0000-7000-8000-000000000000",
    ),
    (
        "DELETE",
        "/v1/templates/{id}",
        "/v1/templates/0190a0a0-0000-7000-8000-000000000000",
    ),
    ("POST", "/v1/webhooks", "/v1/webhooks"),
    (
        "GET",
        "/v1/webhooks/{id}",
        "/v1/webhooks/0190a0a0-0000-7000-8000-000000000000",
    ),
    (
        "PATCH",
        "/v1/webhooks/{id}",
        "/v1/webhooks/0190a0a0-0000-7000-8000-000000000000",
    ),
    (
        "DELETE",
        "/v1/webhooks/{id}",
        "/v1/webhooks/0190a0a0-0000-7000-8000-000000000000",
    ),
    (
        "POST",
        "/v1/webhooks/{id}/rotate-secret",
        "/v1/webhooks/0190a0a0-0000-7000-8000-000000000000/rotate-secret",
    ),
    (
        "GET",
        "/v1/webhooks/{id}/deliveries",
        "/v1/webhooks/0190a0a0-0000-7000-8000-000000000000/deliveries",
    ),
    (
        "POST",
        "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
        "/v1/webhooks/0190a0a0-0000-7000-8000-000000000000/deliveries/0190a0a0-0000-7000-8000-000000000000/redeliver",
    ),
    ("GET", "/v1/plugins", "/v1/plugins"),
    ("POST", "/v1/plugins", "/v1/plugins"),
    ("GET", "/v1/plugins/{plugin}", "/v1/plugins/nope"),
    ("DELETE", "/v1/plugins/{plugin}", "/v1/plugins/nope"),
    (
        "POST",
        "/v1/plugins/{plugin}/grants/{grant}/approve",
        "/v1/plugins/nope/grants/0190a0a0-0000-7000-8000-000000000000/approve",
    ),
    (
        "POST",
        "/v1/plugins/{plugin}/grants/{grant}/deny",
        "/v1/plugins/nope/grants/0190a0a0-0000-7000-8000-000000000000/deny",
    ),
    (
        "GET",
        "/v1/plugins/{plugin}/audit",
        "/v1/plugins/nope/audit",
    ),
    ("GET", "/v1/plugin-audit", "/v1/plugin-audit"),
];

#[tokio::test]
async fn the_permission_matrix_holds_route_by_route() {
    let app = TestApp::new().await;
    app.seed().await;
    let mut tokens = Vec::new();
    for role in Role::ALL {
        let email = format!("{role}@example.com");
        add_user(&app, &email, role).await;
        tokens.push((
            role,
            login(&app, &email).await["access_token"]
                .as_str()
                .unwrap()
                .to_owned(),
        ));
    }
    for (method, template, uri) in ROUTES {
        let method: Method = method.parse().unwrap();
        let permission: Permission = meridian_api::auth::required_permission(&method, template)
            .unwrap_or_else(|| panic!("{method} {template} has no permission"));
        for (role, token) in &tokens {
            let r = app
                .call(method.clone(), uri)
                .token(token)
                .json(&json!({}))
                .send()
                .await;
            let allowed = permits(*role, permission);
            if allowed {
                assert!(
                    r.status != StatusCode::FORBIDDEN && r.status != StatusCode::UNAUTHORIZED,
                    "{role} must be allowed {method} {template}: {} {}",
                    r.status,
                    r.text()
                );
            } else {
                assert_eq!(
                    r.status,
                    StatusCode::FORBIDDEN,
                    "{role} must be refused {method} {template}: {}",
                    r.text()
                );
                assert_eq!(r.json()["code"], "forbidden");
            }
        }
    }
}

#[tokio::test]
async fn roles_are_given_only_downwards_and_users_stay_in_their_tenant() {
    let app = TestApp::new().await;
    add_user(&app, "admin@example.com", Role::Admin).await;
    let admin = login(&app, "admin@example.com").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    app.call(Method::POST, "/v1/users")
        .token(&admin)
        .json(&json!({"email": "o@example.com", "role": "owner"}))
        .send()
        .await
        .problem(StatusCode::FORBIDDEN, "forbidden");
    let r = app.call(Method::POST, "/v1/users").token(&admin)
        .json(&json!({"email": "m@example.com", "role": "member", "password": "a long enough password"})).send().await;
    r.assert_status(StatusCode::CREATED);
    assert!(
        r.json().get("password").is_none(),
        "a given password is not echoed"
    );
    let id = r.json()["id"].as_str().unwrap().to_owned();
    app.call(Method::POST, "/v1/users")
        .token(&admin)
        .json(&json!({"email": "M@example.com", "role": "member"}))
        .send()
        .await
        .problem(StatusCode::CONFLICT, "already_exists");
    app.call(Method::POST, "/v1/users")
        .token(&admin)
        .json(&json!({"email": "x@example.com", "role": "member", "password": "short"}))
        .send()
        .await
        .problem(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let r = app
        .call(Method::PATCH, &format!("/v1/users/{id}"))
        .token(&admin)
        .json(&json!({"role": "viewer"}))
        .send()
        .await;
    r.assert_status(StatusCode::OK);
    assert_eq!(r.json()["role"], "viewer");

    // Another tenant sees none of it.
    let (_, other) = app.new_tenant("tenant-b").await;
    app.call(Method::GET, &format!("/v1/users/{id}"))
        .token(&other)
        .send()
        .await
        .problem(StatusCode::NOT_FOUND, "not_found");
    let list = app
        .call(Method::GET, "/v1/users")
        .token(&other)
        .send()
        .await
        .json();
    assert_eq!(list["items"], json!([]));
}
