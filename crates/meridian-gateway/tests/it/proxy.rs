use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use meridian_gateway::{BreakerConfig, Proxy, ProxyConfig, ProxyError, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that drops its first `drops` connections without answering, then answers
/// every request `200 ok`. Returns its URL and the number of connections it accepted.
async fn flaky_upstream(drops: usize) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst);
            if n < drops {
                drop(socket);
                continue;
            }
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let Ok(read) = socket.read(&mut buf).await else {
                        return;
                    };
                    if read == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..read]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, accepted)
}

fn proxy(url: &str, failures: u32) -> Proxy {
    let mut upstreams = BTreeMap::new();
    upstreams.insert(Service::Orders, url.parse().unwrap());
    Proxy::new(
        upstreams,
        ProxyConfig {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            retries: 1,
            breaker: BreakerConfig {
                failure_threshold: failures,
                cooldown: Duration::from_secs(60),
            },
        },
    )
}

fn parts(method: &str, idempotency_key: Option<&str>) -> http::request::Parts {
    let mut b = http::Request::builder().method(method).uri("/v1/orders");
    if let Some(k) = idempotency_key {
        b = b.header("idempotency-key", k);
    }
    b.body(()).unwrap().into_parts().0
}

#[tokio::test]
async fn idempotent_requests_are_retried_after_a_dropped_connection() {
    let (url, accepted) = flaky_upstream(1).await;
    let p = proxy(&url, 5);
    let resp = p
        .forward(Service::Orders, parts("GET", None), Bytes::new(), None)
        .await
        .expect("the retry reaches the upstream");
    assert_eq!(resp.status(), 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    let (url, accepted) = flaky_upstream(1).await;
    let p = proxy(&url, 5);
    let resp = p
        .forward(
            Service::Orders,
            parts("POST", Some("k-1")),
            Bytes::from_static(b"{}"),
            None,
        )
        .await
        .expect("a POST with an Idempotency-Key is retried");
    assert_eq!(resp.status(), 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn other_posts_are_sent_once() {
    let (url, accepted) = flaky_upstream(1).await;
    let p = proxy(&url, 5);
    let err = p
        .forward(
            Service::Orders,
            parts("POST", None),
            Bytes::from_static(b"{}"),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::Unreachable(..)), "{err}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_breaker_opens_after_consecutive_failures() {
    // Nothing listens on this port: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = proxy(&format!("http://127.0.0.1:{port}"), 2);
    let err = p
        .forward(Service::Orders, parts("GET", None), Bytes::new(), None)
        .await
        .unwrap_err();
    // Two attempts (one retry) are two failures: the circuit is now open.
    assert!(matches!(err, ProxyError::Unreachable(..)), "{err}");
    let err = p
        .forward(Service::Orders, parts("GET", None), Bytes::new(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyError::CircuitOpen(_)), "{err}");
    assert_eq!(p.upstreams()[0].2.as_str(), "open");
}
