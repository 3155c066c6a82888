//! The stock feed: where it is read from and how its CSV is checked, row by row.
//!
//! The CSV has a header row naming the columns `warehouse`, `sku` and `on_hand` (in any
//! order, case-insensitive; an optional `counted_at` column holds an RFC 3339 time, and
//! other columns are ignored). Fields are plain: no quoting, no commas inside a value
//! (warehouse codes and SKUs cannot hold one). A bad row is reported with its line
//! number and skipped; the good rows still count.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use meridian_core::{Sku, WarehouseCode};
use meridian_inventory::MAX_ON_HAND;

/// One checked row of the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The 1-based line of the feed it came from.
    pub line: usize,
    pub warehouse: WarehouseCode,
    pub sku: Sku,
    pub on_hand: i64,
    /// When the count was taken: the row's `counted_at`, or when the feed was read.
    pub counted_at: DateTime<Utc>,
}

/// A row that was skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowError {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// A feed read: its good rows (one per warehouse and SKU) and the skipped ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub rows: Vec<Row>,
    pub errors: Vec<RowError>,
}

/// Why the feed as a whole could not be used (nothing of it is published).
#[derive(Debug, PartialEq, Eq)]
pub struct FeedError(pub String);

impl fmt::Display for FeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FeedError {}

/// Column positions found in the header.
struct Columns {
    warehouse: usize,
    sku: usize,
    on_hand: usize,
    counted_at: Option<usize>,
    width: usize,
}

fn columns(header: &str) -> Result<Columns, FeedError> {
    let names: Vec<String> = header
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let find = |name: &str| names.iter().position(|n| n == name);
    let missing: Vec<&str> = ["warehouse", "sku", "on_hand"]
        .into_iter()
        .filter(|n| find(n).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(FeedError(format!(
            "line 1: the header must name the columns warehouse, sku and on_hand; missing {}",
            missing.join(", ")
        )));
    }
    for name in ["warehouse", "sku", "on_hand", "counted_at"] {
        if names.iter().filter(|n| *n == name).count() > 1 {
            return Err(FeedError(format!(
                "line 1: the header names the column {name} twice"
            )));
        }
    }
    Ok(Columns {
        warehouse: find("warehouse").expect("checked"),
        sku: find("sku").expect("checked"),
        on_hand: find("on_hand").expect("checked"),
        counted_at: find("counted_at"),
        width: names.len(),
    })
}

/// Checks a feed's CSV. `read_at` is the count time of rows without `counted_at`.
///
/// A feed without a usable header is an error as a whole. Otherwise every data row is
/// either a [`Row`] or a [`RowError`] naming its line; blank lines are ignored. A warehouse
/// and SKU named on several lines is ambiguous: all those lines are skipped.
pub fn parse(text: &str, read_at: DateTime<Utc>) -> Result<Parsed, FeedError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((header_line, header)) = lines.next() else {
        return Err(FeedError(
            "the feed is empty: it needs a header row `warehouse,sku,on_hand`".into(),
        ));
    };
    let header = header.strip_prefix('\u{feff}').unwrap_or(header);
    let cols = columns(header)
        .map_err(|e| FeedError(e.0.replacen("line 1", &format!("line {header_line}"), 1)))?;
    let mut out = Parsed::default();
    // Where each (warehouse, sku) was first seen, and whether it was seen again.
    let mut seen: BTreeMap<(WarehouseCode, Sku), (usize, bool)> = BTreeMap::new();
    let mut candidates = Vec::new();
    for (line, text) in lines {
        match row(&cols, line, text, read_at) {
            Ok(r) => {
                let key = (r.warehouse.clone(), r.sku.clone());
                match seen.get_mut(&key) {
                    Some((first, dup)) => {
                        *dup = true;
                        out.errors.push(RowError {
                            line,
                            reason: format!(
                                "warehouse {} sku {} is also on line {first}; both are skipped",
                                r.warehouse, r.sku
                            ),
                        });
                    }
                    None => {
                        seen.insert(key, (line, false));
                        candidates.push(r);
                    }
                }
            }
            Err(reason) => out.errors.push(RowError { line, reason }),
        }
    }
    for r in candidates {
        let (_, dup) = seen[&(r.warehouse.clone(), r.sku.clone())];
        if dup {
            out.errors.push(RowError {
                line: r.line,
                reason: format!(
                    "warehouse {} sku {} appears again later; both are skipped",
                    r.warehouse, r.sku
                ),
            });
        } else {
            out.rows.push(r);
        }
    }
    out.errors.sort_by_key(|e| e.line);
    Ok(out)
}

fn row(cols: &Columns, line: usize, text: &str, read_at: DateTime<Utc>) -> Result<Row, String> {
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    if fields.len() != cols.width {
        return Err(format!(
            "expected {} fields like the header, found {}",
            cols.width,
            fields.len()
        ));
    }
    let warehouse: WarehouseCode = fields[cols.warehouse]
        .parse()
        .map_err(|e| format!("warehouse {:?}: {e}", fields[cols.warehouse]))?;
    let sku: Sku = fields[cols.sku]
        .parse()
        .map_err(|e| format!("sku {:?}: {e}", fields[cols.sku]))?;
    let raw = fields[cols.on_hand];
    let on_hand: i64 = raw
        .parse()
        .map_err(|_| format!("on_hand {raw:?} is not a whole number"))?;
    if !(0..=MAX_ON_HAND).contains(&on_hand) {
        return Err(format!("on_hand {on_hand} must be 0 to {MAX_ON_HAND}"));
    }
    let counted_at = match cols.counted_at.map(|i| fields[i]) {
        None | Some("") => read_at,
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map_err(|e| format!("counted_at {t:?} is not an RFC 3339 time: {e}"))?
            .with_timezone(&Utc),
    };
    Ok(Row {
        line,
        warehouse,
        sku,
        on_hand,
        counted_at,
    })
}

/// Where the feed comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File(std::path::PathBuf),
    Http(String),
}

impl Source {
    /// `http://...` and `https://...` are fetched; anything else is a file path.
    pub fn parse(feed: &str) -> Result<Source, FeedError> {
        let feed = feed.trim();
        if feed.is_empty() {
            return Err(FeedError("feed is empty".into()));
        }
        let lower = feed.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Ok(Source::Http(feed.to_owned()));
        }
        Ok(Source::File(feed.into()))
    }

    /// A client for `https://` feeds that trusts the system's roots plus, if given, the CA
    /// certificates in the PEM file `ca_file` (a feed served under a private CA).
    pub fn http_client(ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, FeedError> {
        // reqwest is built with TLS but no crypto provider of its own; the SDK's client
        // installs ring's too, and whichever came first stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder();
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                FeedError(format!("cannot read the CA file {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                FeedError(format!("the CA file {} is not PEM: {e}", path.display()))
            })?;
            if certs.is_empty() {
                return Err(FeedError(format!(
                    "the CA file {} holds no certificate",
                    path.display()
                )));
            }
            builder = builder.tls_certs_merge(certs);
        }
        builder
            .build()
            .map_err(|e| FeedError(format!("cannot build the HTTP client: {e}")))
    }

    /// The feed's text.
    pub async fn read(
        &self,
        http: &reqwest::Client,
        timeout: Duration,
    ) -> Result<String, FeedError> {
        match self {
            Source::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| FeedError(format!("cannot read the feed {}: {e}", path.display()))),
            Source::Http(url) => {
                let resp = http
                    .get(url)
                    .timeout(timeout)
                    .send()
                    .await
                    .map_err(|e| FeedError(format!("cannot fetch the feed {url}: {e}")))?;
                let status = resp.status();
                if !status.is_success() {
                    return Err(FeedError(format!("the feed {url} answered {status}")));
                }
                resp.text()
                    .await
                    .map_err(|e| FeedError(format!("cannot read the feed {url}: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        "2026-11-21T10:00:00Z".parse().unwrap()
    }

    fn keyed(p: &Parsed) -> Vec<(String, String, i64, usize)> {
        p.rows
            .iter()
            .map(|r| {
                (
                    r.warehouse.to_string(),
                    r.sku.to_string(),
                    r.on_hand,
                    r.line,
                )
            })
            .collect()
    }

    #[test]
    fn good_rows_are_read_with_their_lines() {
        let p = parse("warehouse,sku,on_hand\nWH1,A-1,7\r\n\nWH2,A-1,0\n", at()).unwrap();
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(
            keyed(&p),
            vec![
                ("WH1".into(), "A-1".into(), 7, 2),
                ("WH2".into(), "A-1".into(), 0, 4)
            ]
        );
        assert!(p.rows.iter().all(|r| r.counted_at == at()));
    }

    #[test]
    fn columns_may_come_in_any_order_with_extras_and_a_count_time() {
        let p = parse(
            "\u{feff}SKU, note ,On_Hand,counted_at,Warehouse\nB.2,shelf 3,12,2026-11-20T08:30:00+01:00,WH-9\nC,x,1,,WH-9\n",
            at(),
        )
        .unwrap();
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.rows[0].warehouse.as_str(), "WH-9");
        assert_eq!(p.rows[0].sku.as_str(), "B.2");
        assert_eq!(p.rows[0].on_hand, 12);
        assert_eq!(
            p.rows[0].counted_at,
            "2026-11-20T07:30:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(p.rows[1].counted_at, at());
    }

    #[test]
    fn bad_rows_are_skipped_and_named_by_line() {
        let text = "warehouse,sku,on_hand\n\
                    WH1,A-1,5\n\
                    WH1,A-2,five\n\
                    WH1,A-3,-1\n\
                    WH1,A-4,1000000001\n\
                    WH 1,A-5,1\n\
                    WH1,,1\n\
                    WH1,A-7\n\
                    WH1,A-8,2.5\n\
                    WH1,A-9,3\n";
        let p = parse(text, at()).unwrap();
        assert_eq!(
            keyed(&p),
            vec![
                ("WH1".into(), "A-1".into(), 5, 2),
                ("WH1".into(), "A-9".into(), 3, 10)
            ]
        );
        let errors: Vec<String> = p.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 7, "{errors:#?}");
        let expect = [
            "line 3: on_hand \"five\" is not a whole number",
            "line 4: on_hand -1 must be 0 to 1000000000",
            "line 5: on_hand 1000000001 must be 0 to 1000000000",
            "line 6: warehouse \"WH 1\": warehouse code may contain only",
            "line 7: sku \"\": sku must be 1 to 64 characters",
            "line 8: expected 3 fields like the header, found 2",
            "line 9: on_hand \"2.5\" is not a whole number",
        ];
        for (got, want) in errors.iter().zip(expect) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn a_bad_count_time_skips_the_row() {
        let p = parse(
            "warehouse,sku,on_hand,counted_at\nWH1,A,1,yesterday\n",
            at(),
        )
        .unwrap();
        assert!(p.rows.is_empty());
        assert!(
            p.errors[0]
                .to_string()
                .starts_with("line 2: counted_at \"yesterday\"")
        );
    }

    #[test]
    fn a_warehouse_and_sku_on_two_lines_is_skipped_on_both() {
        let p = parse("warehouse,sku,on_hand\nWH1,A,1\nWH1,B,2\nWH1,A,3\n", at()).unwrap();
        assert_eq!(keyed(&p), vec![("WH1".into(), "B".into(), 2, 3)]);
        let lines: Vec<usize> = p.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 4]);
        assert!(
            p.errors[1].reason.contains("also on line 2"),
            "{:?}",
            p.errors
        );
    }

    #[test]
    fn a_feed_without_its_header_is_refused_whole() {
        assert!(parse("", at()).unwrap_err().0.contains("empty"));
        let e = parse("\nwarehouse,sku,count\nWH1,A,1\n", at()).unwrap_err();
        assert_eq!(
            e.0,
            "line 2: the header must name the columns warehouse, sku and on_hand; missing on_hand"
        );
        // A feed that starts with data has no header.
        let e = parse("WH1,A,1\n", at()).unwrap_err();
        assert!(e.0.contains("missing warehouse, sku, on_hand"), "{e}");
        let e = parse("warehouse,sku,on_hand,sku\n", at()).unwrap_err();
        assert!(e.0.contains("sku twice"), "{e}");
    }

    #[test]
    fn sources_are_files_or_http_urls() {
        assert_eq!(
            Source::parse("stock.csv").unwrap(),
            Source::File("stock.csv".into())
        );
        assert_eq!(
            Source::parse("http://127.0.0.1:9/stock.csv").unwrap(),
            Source::Http("http://127.0.0.1:9/stock.csv".into())
        );
        assert_eq!(
            Source::parse("HTTPS://x/y").unwrap(),
            Source::Http("HTTPS://x/y".into())
        );
        assert!(Source::parse("  ").is_err());
    }

    /// An https feed under a private CA is read once its CA file is given, and refused
    /// (naming the feed) without it.
    #[tokio::test]
    async fn an_https_feed_is_read_with_its_ca() {
        let csv = "warehouse,sku,on_hand\nWH1,SKU-1,5\n";
        let ca = meridian_http::test_support::TestCa::new();
        let (addr, _requests) = ca.serve_body(200, csv).await;
        let url = format!("https://localhost:{}/stock.csv", addr.port());
        let source = Source::parse(&url).unwrap();
        let timeout = Duration::from_secs(10);

        let err = source
            .read(&Source::http_client(None).unwrap(), timeout)
            .await
            .unwrap_err();
        assert!(
            err.0.contains("cannot fetch the feed https://localhost"),
            "{}",
            err.0
        );

        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.ca_pem).unwrap();
        let client = Source::http_client(Some(&ca_file)).unwrap();
        assert_eq!(source.read(&client, timeout).await.unwrap(), csv);

        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        assert!(
            Source::http_client(Some(&not_pem))
                .unwrap_err()
                .0
                .contains("not.pem")
        );
        assert!(
            Source::http_client(Some(&dir.path().join("missing.pem")))
                .unwrap_err()
                .0
                .contains("cannot read the CA file")
        );
    }
}
