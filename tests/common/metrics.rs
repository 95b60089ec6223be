//! `/metrics`, parsed strictly as the Prometheus text exposition format (0.0.4).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::http::get_after;
use super::wait_until;

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`.
fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A sample value, `+Inf`, `-Inf` and `NaN` included.
fn parse_float(s: &str) -> f64 {
    match s {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        s => s
            .parse()
            .unwrap_or_else(|_| panic!("bad sample value {s:?}")),
    }
}

/// A strict parser of the Prometheus text exposition format (0.0.4): every sample must belong
/// to a family whose `# TYPE` came first (once), names and labels must be well formed, label
/// values correctly escaped, no sample repeated. Returns the samples keyed by
/// `name{label="value",...}` (labels sorted, values unescaped; bare `name` without labels).
pub fn parse_exposition(text: &str) -> HashMap<String, f64> {
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut seen_families: HashSet<String> = HashSet::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start_matches(' ');
            let mut parts = rest.splitn(3, ' ');
            match parts.next() {
                Some("HELP") => {
                    let name = parts.next().expect("HELP name");
                    assert!(valid_metric_name(name), "bad HELP name in {line:?}");
                    assert!(helps.insert(name.to_owned()), "second HELP for {name}");
                }
                Some("TYPE") => {
                    let name = parts.next().expect("TYPE name");
                    let kind = parts.next().expect("TYPE kind");
                    assert!(valid_metric_name(name), "bad TYPE name in {line:?}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "bad type in {line:?}"
                    );
                    assert!(
                        !seen_families.contains(name),
                        "TYPE after samples of {name}"
                    );
                    assert!(
                        types.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "second TYPE for {name}"
                    );
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("sample without value");
        let name = &line[..name_end];
        assert!(valid_metric_name(name), "bad metric name in {line:?}");
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after) = rest.strip_prefix('{') {
            let mut s = after;
            loop {
                if let Some(r) = s.strip_prefix('}') {
                    s = r;
                    break;
                }
                let eq = s.find('=').expect("label without =");
                let label = &s[..eq];
                assert!(valid_label_name(label), "bad label name in {line:?}");
                s = s[eq + 1..].strip_prefix('"').expect("unquoted label value");
                let mut value = String::new();
                let mut chars = s.char_indices();
                let end = loop {
                    match chars.next().expect("unterminated label value") {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next().expect("dangling escape").1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => panic!("bad escape \\{c} in {line:?}"),
                        },
                        (_, '\n') => panic!("raw newline in label value"),
                        (_, c) => value.push(c),
                    }
                };
                assert!(
                    labels.insert(label.to_owned(), value).is_none(),
                    "repeated label in {line:?}"
                );
                s = &s[end + 1..];
                if let Some(r) = s.strip_prefix(',') {
                    s = r;
                } else {
                    assert!(s.starts_with('}'), "labels not closed in {line:?}");
                }
            }
            rest = s;
        }
        let rest = rest.strip_prefix(' ').expect("space before the value");
        let mut fields = rest.split(' ');
        let value = parse_float(fields.next().expect("value"));
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().expect("timestamp");
        }
        assert!(fields.next().is_none(), "trailing fields in {line:?}");
        let family = [name, ""]
            .into_iter()
            .chain(["_bucket", "_sum", "_count"].map(|s| name.strip_suffix(s).unwrap_or("")))
            .find(|f| {
                !f.is_empty()
                    && types.get(*f).is_some_and(|kind| {
                        *f == name || matches!(kind.as_str(), "histogram" | "summary")
                    })
            })
            .unwrap_or_else(|| panic!("sample {name} without a TYPE before it"));
        if types[family] == "histogram" && name.ends_with("_bucket") {
            assert!(labels.contains_key("le"), "bucket without le: {line:?}");
        }
        if types[family] == "counter" {
            assert!(value >= 0.0, "negative counter: {line:?}");
        }
        seen_families.insert(family.to_owned());
        let key = if labels.is_empty() {
            name.to_owned()
        } else {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            format!("{name}{{{}}}", inner.join(","))
        };
        assert!(
            samples.insert(key, value).is_none(),
            "repeated sample {line:?}"
        );
    }
    samples
}

/// Scrapes `/metrics` after `prefix` (e.g. a PROXY header) and parses it.
pub fn scrape_after(addr: SocketAddr, prefix: &[u8]) -> HashMap<String, f64> {
    let response = get_after(addr, prefix, "/metrics");
    assert_eq!(response.status(), 200, "GET /metrics: {}", response.head);
    parse_exposition(&response.text())
}

/// Scrapes `/metrics` and parses it.
pub fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    scrape_after(addr, b"")
}

/// One sample's value, 0 when absent.
pub fn sample(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

/// Polls `/metrics` until `ok` holds for the samples (or panics after `within`).
pub fn wait_metrics(
    addr: SocketAddr,
    within: Duration,
    ok: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let mut last = HashMap::new();
    let matched = wait_until(within, || {
        last = scrape(addr);
        ok(&last)
    });
    assert!(matched, "metrics never matched: {last:?}");
    last
}
