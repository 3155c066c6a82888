//! The plugin instance manager inside `meridian serve`, against the real binary: a plugin
//! with its sidecar started from the registry and reported running (its token works on its
//! sidecar), a crash-looping plugin that backs off and is reported `crashlooping`, and both
//! pairs stopped on deregistration.

use std::path::Path;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::support::{Api, Db, Server, command, run_cli};

/// The first restart delay the server is given; each failure doubles it.
const BACKOFF_MS: u64 = 200;

fn cli(db: &Db, args: &[&str]) -> String {
    let out = run_cli(db, args);
    assert!(
        out.status.success(),
        "meridian {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn register(db: &Db, name: &str, script: &str) {
    let manifest = db.data_dir().join(format!("{name}.toml"));
    std::fs::write(
        &manifest,
        format!(
            "name = \"{name}\"\nversion = \"1.0.0\"\npool = \"notify\"\n\n[run]\ncommand = [\"sh\", \"-c\", {script:?}]\n"
        ),
    )
    .unwrap();
    cli(db, &["plugins", "register", manifest.to_str().unwrap()]);
}

/// A platform admin's access token.
async fn platform_admin(db: &Db, base: &str) -> String {
    let out = cli(db, &["tenants", "create", "ops", "--json"]);
    let tenant: Value = serde_json::from_str(&out).unwrap();
    let tenant = tenant["tenant_id"].as_str().unwrap();
    let password = "platform-admin-long-password";
    let mut child = command(db)
        .args([
            "users",
            "create",
            "--tenant",
            tenant,
            "--email",
            "root@ops.test",
            "--role",
            "platform_admin",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    }
    assert!(child.wait().unwrap().success());
    let r = crate::support::http()
        .post(format!("{base}/v1/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=password&username=root%40ops.test&password={password}"
        ))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

/// Polls `GET /v1/plugins/{name}` until its status is `want`; panics after 60 s.
async fn until_status(api: &Api, name: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let p = api
            .ok(Method::GET, &format!("/v1/plugins/{name}"), None)
            .await;
        if p["status"] == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became {want}: {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn until_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let l = lines(path);
        if l.len() >= n {
            return l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} has {} lines, expected {n}",
            path.display(),
            l.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_run_crash_loops_back_off_and_deregistration_stops_them() {
    let db = Db::sqlite();
    let dir = db.data_dir();
    let (starts, steady) = (dir.join("crashy.starts"), dir.join("steady.env"));
    // Exits at once, every time, noting when it started (ns since the epoch).
    register(
        &db,
        "crashy",
        &format!("date +%s%N >> {}; exit 3", starts.display()),
    );
    // Stays up, telling the test its pid, how to reach its sidecar and whether it sees the
    // server's settings.
    register(
        &db,
        "steady",
        &format!(
            "printf '%s\\n%s\\n%s\\n%s\\n' $$ \"$MERIDIAN_SIDECAR_URL\" \"$MERIDIAN_SIDECAR_TOKEN\" \"${{MERIDIAN_DATA_DIR:-unset}}\" > {}.tmp && mv {0}.tmp {0}; exec sleep 3600",
            steady.display()
        ),
    );
    let server = Server::start_with(
        &db,
        &[
            ("BUS_BACKEND", "embedded".into()),
            ("MERIDIAN_PLUGIN_POLL_MS", "100".into()),
            ("MERIDIAN_PLUGIN_BACKOFF_MS", BACKOFF_MS.to_string()),
            ("MERIDIAN_PLUGIN_BACKOFF_MAX_MS", "10000".into()),
            ("MERIDIAN_PLUGIN_LIVENESS_MS", "200".into()),
        ],
    )
    .await;
    let token = platform_admin(&db, &server.base).await;
    let api = Api::new(&server.base, &token);

    // The steady pair runs; its token opens its own sidecar.
    until_status(&api, "steady", "running").await;
    let env = until_lines(&steady, 4).await;
    let (pid, sidecar, sidecar_token) = (&env[0], &env[1], &env[2]);
    assert!(sidecar_token.len() >= 16);
    assert_eq!(
        env[3], "unset",
        "the plugin inherits none of the server's settings"
    );
    let r = crate::support::http()
        .get(format!("{sidecar}/v1/config"))
        .bearer_auth(sidecar_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let config: Value = r.json().await.unwrap();
    assert_eq!(config["pool"], "notify");

    // The crashing pair is reported crash-looping, and its restarts back off: each wait is
    // at least the doubled delay (lower bounds only; a slow machine only widens them).
    until_status(&api, "crashy", "crashlooping").await;
    let started: Vec<u128> = until_lines(&starts, 4)
        .await
        .iter()
        .take(4)
        .map(|l| l.parse().unwrap())
        .collect();
    for (i, pair) in started.windows(2).enumerate() {
        let gap_ms = (pair[1] - pair[0]) / 1_000_000;
        let backoff = u128::from(BACKOFF_MS) << i;
        assert!(
            gap_ms >= backoff,
            "restart {} came {gap_ms} ms after the previous start, before its {backoff} ms backoff",
            i + 1
        );
    }

    // Deregistration stops both pairs: the plugin process and the sidecar are gone.
    cli(&db, &["plugins", "deregister", "steady"]);
    cli(&db, &["plugins", "deregister", "crashy"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let http = crate::support::http();
    loop {
        let plugin_alive = Path::new(&format!("/proc/{pid}")).exists();
        let sidecar_alive = http
            .get(format!("{sidecar}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok();
        if !plugin_alive && !sidecar_alive {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deregistered pair still up (plugin {plugin_alive}, sidecar {sidecar_alive})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the crashing one is no longer restarted.
    let before = lines(&starts).len();
    // Longer than any backoff it had reached, with a poll in between.
    tokio::time::sleep(Duration::from_millis(BACKOFF_MS * 16)).await;
    assert_eq!(
        lines(&starts).len(),
        before,
        "a deregistered plugin was restarted"
    );
}

/// Publishes one event through a sidecar, as its plugin would.
async fn publish(sidecar: &str, token: &str, topic: &str) -> reqwest::StatusCode {
    crate::support::http()
        .post(format!("{sidecar}/v1/publish"))
        .bearer_auth(token)
        .json(&serde_json::json!({
            "topic": topic,
            "subject": "o-1",
            "tenant": meridian_core::TenantId::new(),
            "data": {}
        }))
        .send()
        .await
        .unwrap()
        .status()
}

/// Denying an approved grant of a running plugin restarts its pair, and the new sidecar
/// refuses what the grant allowed; approving it again restores it. A sidecar stops when
/// its server is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_decision_restarts_the_running_pair() {
    let db = Db::sqlite();
    let env = db.data_dir().join("flagger.env");
    let manifest = db.data_dir().join("flagger.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"flagger\"\nversion = \"1.0.0\"\npool = \"dgm\"\n\n[run]\ncommand = [\"sh\", \"-c\", {:?}]\n\n[grants]\npublish = [\"platform.oms.order.flagged\"]\n",
            format!(
                "printf '%s\\n%s\\n%s\\n' \"$MERIDIAN_SIDECAR_URL\" \"$MERIDIAN_SIDECAR_TOKEN\" $$ > {}.tmp && mv {0}.tmp {0}; exec sleep 3600",
                env.display()
            )
        ),
    )
    .unwrap();
    cli(&db, &["plugins", "register", manifest.to_str().unwrap()]);
    let listed = cli(&db, &["plugins", "list"]);
    let plugin: Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    let grant = plugin["grants"][0]["id"].as_str().unwrap().to_owned();
    cli(&db, &["plugins", "approve", "flagger", &grant]);
    let server = Server::start_with(
        &db,
        &[
            ("BUS_BACKEND", "embedded".into()),
            ("MERIDIAN_PLUGIN_POLL_MS", "100".into()),
        ],
    )
    .await;
    let token = platform_admin(&db, &server.base).await;
    let api = Api::new(&server.base, &token);
    let topic = "platform.oms.order.flagged";

    until_status(&api, "flagger", "running").await;
    let first = until_lines(&env, 3).await;
    assert_eq!(
        publish(&first[0], &first[1], topic).await,
        reqwest::StatusCode::ACCEPTED
    );

    // Revoked: the pair is started again with a new token, and its sidecar refuses.
    // Approved again: allowed again.
    let mut current = first;
    for (decision, expected) in [
        ("deny", reqwest::StatusCode::FORBIDDEN),
        ("approve", reqwest::StatusCode::ACCEPTED),
    ] {
        cli(&db, &["plugins", decision, "flagger", &grant]);
        current = until_changed(&env, &current).await;
        until_status(&api, "flagger", "running").await;
        assert_eq!(
            publish(&current[0], &current[1], topic).await,
            expected,
            "after {decision}"
        );
    }

    // The server killed outright cannot stop its pairs: the sidecar notices its parent is
    // gone and stops by itself, taking the plugin with it, so nothing keeps consuming beside
    // the next start's pair.
    let plugin_pid = current[2].clone();
    drop(server);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let http = crate::support::http();
    while http
        .get(format!("{}/healthz", current[0]))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sidecar outlived its server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while running(&plugin_pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the plugin (pid {plugin_pid}) outlived its server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether process `pid` runs (exists and is not a zombie waiting to be reaped).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// Waits until the plugin has written a new sidecar address and token (a new start).
async fn until_changed(path: &Path, before: &[String]) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = lines(path);
        if now.len() >= 3 && now[1] != before[1] {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pair was not restarted after the decision changed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
