//! https to a server under a private CA: refused with the system roots alone, accepted
//! once the CA file is configured; the guard refuses loopback names at connect time.

use meridian_http::test_support::TestCa;
use meridian_http::{AddressGuard, Outbound};

#[tokio::test]
async fn a_private_ca_is_trusted_only_from_the_ca_file() {
    let ca = TestCa::new();
    let (addr, mut received) = ca.serve(204).await;
    let url = format!("https://localhost:{}/hook", addr.port());

    let system = Outbound::system().builder().build().unwrap();
    let err = system.post(&url).body("x").send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ca.pem");
    std::fs::write(&file, &ca.ca_pem).unwrap();
    let outbound = Outbound::with_ca_file(&file).unwrap();
    assert_eq!(outbound.ca_file(), Some(file.as_path()));
    let client = outbound.builder().build().unwrap();
    let resp = client.post(&url).body("hello").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let got = received.recv().await.unwrap();
    assert_eq!((got.method.as_str(), got.path.as_str()), ("POST", "/hook"));
    assert_eq!(&got.body[..], b"hello");
}

#[test]
fn a_bad_ca_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let e = Outbound::with_ca_file(&missing).unwrap_err().to_string();
    assert!(
        e.contains("MERIDIAN_HTTP_CA_FILE") && e.contains("missing.pem"),
        "{e}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    let e = Outbound::with_ca_file(&empty).unwrap_err().to_string();
    assert!(e.contains("no PEM certificate"), "{e}");
}

#[tokio::test]
async fn the_guard_refuses_names_that_resolve_to_loopback() {
    let ca = TestCa::new();
    let (addr, _received) = ca.serve(204).await;
    let outbound = Outbound::with_ca_pem(ca.ca_pem.as_bytes()).unwrap();
    let url = format!("https://localhost:{}/hook", addr.port());

    let guarded = outbound
        .guarded_builder(AddressGuard::STRICT)
        .build()
        .unwrap();
    let err = guarded.post(&url).send().await.unwrap_err();
    let mut source = std::error::Error::source(&err);
    let mut refused = None;
    while let Some(s) = source {
        if let Some(n) = s.downcast_ref::<meridian_http::guard::NotPublic>() {
            refused = Some(n.to_string());
        }
        source = s.source();
    }
    let refused = refused.unwrap_or_else(|| panic!("not refused by the guard: {err:?}"));
    assert!(
        refused.contains("localhost resolves only to non-public addresses"),
        "{refused}"
    );

    let open = outbound
        .guarded_builder(AddressGuard::ALLOW_PRIVATE)
        .build()
        .unwrap();
    let resp = open.post(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 204);
}
