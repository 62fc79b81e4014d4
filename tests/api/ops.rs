//! The operations artifacts agree with the relay: every metric that the
//! Grafana dashboard, the alert rules, the HPA and the Prometheus adapter
//! rule name is one the relay exports, with label values it exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{json, Value};

use crate::helpers::*;

const DASHBOARD: &str = "deploy/grafana/dashboards/blindrelay.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const K8S_RULES: &str = "k8s/prometheusrule.yaml";
const ADAPTER: &str = "k8s/prometheus-adapter-rules.yaml";
const HPA: &str = "k8s/hpa.yaml";

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// What `/metrics` exposes: each name (histograms with their `_bucket`,
/// `_sum` and `_count` series) and, per name, the values of each label.
struct Exported {
    names: BTreeSet<String>,
    labels: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

async fn exported() -> Exported {
    let app = spawn_app(&[]).await;
    // Traffic, so that the HTTP series exist.
    let (_, mut m) = app.room_of(2).await;
    m[0].0.send_json(json!({"type": "send", "data": "x"})).await;
    m[1].0.recv_json().await;
    app.get("/health").await;
    app.get("/nowhere").await;
    let (_, _, text) = app.get("/metrics").await;
    let mut names = BTreeSet::new();
    let mut labels: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            names.insert(name.to_owned());
            if kind == "histogram" || kind == "summary" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, _) = line.rsplit_once(' ').unwrap();
        let (name, matchers) = split_selector(series);
        for (label, _, value) in matchers {
            labels
                .entry(name.to_owned())
                .or_default()
                .entry(label)
                .or_default()
                .insert(value);
        }
    }
    Exported { names, labels }
}

/// A label matcher: label, operator (`=`, `!=`, `=~`, `!~`), value.
type Matcher = (String, String, String);

/// `name{a="x",b=~"y|z"}` into the name and its (label, operator, value)
/// matchers.
fn split_selector(s: &str) -> (&str, Vec<Matcher>) {
    let Some((name, rest)) = s.split_once('{') else {
        return (s, Vec::new());
    };
    let body: Vec<char> = rest.split('}').next().unwrap_or("").chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        while i < body.len() && (body[i] == ',' || body[i].is_whitespace()) {
            i += 1;
        }
        let start = i;
        while i < body.len() && (body[i].is_ascii_alphanumeric() || body[i] == '_') {
            i += 1;
        }
        let label: String = body[start..i].iter().collect();
        let op_start = i;
        while i < body.len() && body[i] != '"' {
            i += 1;
        }
        let op: String = body[op_start..i]
            .iter()
            .collect::<String>()
            .trim()
            .to_owned();
        i += 1; // the opening quote
        let mut value = String::new();
        while i < body.len() && body[i] != '"' {
            if body[i] == '\\' {
                i += 1;
            }
            if i < body.len() {
                value.push(body[i]);
            }
            i += 1;
        }
        i += 1; // the closing quote
        if label.is_empty() {
            break;
        }
        out.push((label, op, value));
    }
    (name, out)
}

/// Every `blindrelay_*` selector in a text: the metric name and its matchers.
fn selectors(text: &str) -> Vec<(String, Vec<Matcher>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("blindrelay_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let matchers = if tail[end..].starts_with('{') {
            let close = tail[end..]
                .find('}')
                .map(|i| end + i + 1)
                .unwrap_or(tail.len());
            split_selector(&tail[..close]).1
        } else {
            Vec::new()
        };
        out.push((name.to_owned(), matchers));
        rest = &tail[end..];
    }
    out
}

/// Checks one artifact: every selector names an exported metric, and every
/// exact or alternation matcher on a label the relay sets uses a value the
/// relay exports.
fn check(file: &str, text: &str, exp: &Exported) -> usize {
    let found = selectors(text);
    for (name, matchers) in &found {
        assert!(
            exp.names.contains(name),
            "{file}: {name} is not a metric the relay exports"
        );
        for (label, op, value) in matchers {
            let Some(values) = exp.labels.get(name).and_then(|l| l.get(label)) else {
                continue; // a label Prometheus adds (instance, job, pod, ...)
            };
            if label == "endpoint" || label == "status" {
                continue; // open sets: routes and status codes
            }
            let wanted: Vec<&str> = match op.as_str() {
                "=" => vec![value.as_str()],
                "=~" if value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|') =>
                {
                    value.split('|').collect()
                }
                _ => continue,
            };
            for v in wanted {
                assert!(
                    values.contains(v),
                    "{file}: {name}{{{label}=\"{v}\"}} is never exported (known: {values:?})"
                );
            }
        }
    }
    found.len()
}

/// The values of `keys` in a YAML text, block scalars (`|`, `>`) included;
/// quotes are kept (the selectors inside are read the same way).
fn yaml_values(text: &str, keys: &[&str]) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start().trim_start_matches("- ");
        let indent = line.len() - line.trim_start().len();
        i += 1;
        let Some(value) = keys
            .iter()
            .find_map(|k| trimmed.strip_prefix(k).and_then(|r| r.strip_prefix(':')))
        else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let mut block = Vec::new();
            while i < lines.len()
                && (lines[i].trim().is_empty()
                    || lines[i].len() - lines[i].trim_start().len() > indent)
            {
                block.push(lines[i].trim());
                i += 1;
            }
            out.push(block.join("\n"));
        } else {
            out.push(value.to_owned());
        }
    }
    out
}

/// Every PromQL expression in the dashboard (panel targets and variables).
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains('_') => out.push(s.clone()),
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

#[actix_web::test]
async fn every_dashboard_query_names_a_metric_the_relay_exports() {
    let exp = exported().await;
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(
        queries.len() >= 10,
        "the dashboard has {} queries",
        queries.len()
    );
    for q in &queries {
        let n = check(DASHBOARD, q, &exp);
        assert!(
            n > 0 || q.contains("up{") || q.starts_with("up"),
            "{DASHBOARD}: the query {q:?} names no relay metric"
        );
    }
    // The panels the operations issue asks for are there.
    let all = queries.join("\n");
    for name in [
        "blindrelay_connections_active",
        "blindrelay_rooms_active",
        "blindrelay_messages_received_total",
        "blindrelay_messages_delivered_total",
        "blindrelay_connections_rejected_total",
        "blindrelay_disconnects_total",
        "blindrelay_redis_up",
        "blindrelay_http_requests_duration_seconds_bucket",
        "blindrelay_resident_memory_bytes",
        "blindrelay_room_restarts_total",
    ] {
        assert!(all.contains(name), "no panel shows {name}");
    }
}

#[actix_web::test]
async fn every_alert_rule_and_autoscaling_metric_names_a_metric_the_relay_exports() {
    let exp = exported().await;
    let mut total = 0;
    for (file, keys) in [
        (ALERTS, &["expr"][..]),
        (K8S_RULES, &["expr"][..]),
        (ADAPTER, &["seriesQuery", "metricsQuery"][..]),
        (HPA, &["name"][..]),
    ] {
        let text = read(file);
        for expr in yaml_values(&text, keys) {
            total += check(file, &expr, &exp);
        }
    }
    assert!(total >= 10, "only {total} metric references in the rules");
}

#[test]
fn selectors_are_read_with_their_matchers() {
    let found = selectors(
        r#"sum(rate(blindrelay_disconnects_total{reason=~"a|b", job!="x"}[5m])) / blindrelay_up"#,
    );
    assert_eq!(found[0].0, "blindrelay_disconnects_total");
    assert_eq!(
        found[0].1,
        vec![
            ("reason".to_owned(), "=~".to_owned(), "a|b".to_owned()),
            ("job".to_owned(), "!=".to_owned(), "x".to_owned())
        ]
    );
    assert_eq!(found[1].0, "blindrelay_up");
}

#[test]
#[should_panic(expected = "is not a metric the relay exports")]
fn a_query_naming_an_unknown_metric_is_refused() {
    let exp = Exported {
        names: ["blindrelay_rooms_active".to_owned()].into(),
        labels: BTreeMap::new(),
    };
    check(
        "test",
        "sum(blindrelay_rooms_active) + blindrelay_roms_active",
        &exp,
    );
}

#[test]
#[should_panic(expected = "is never exported")]
fn a_reason_the_relay_never_reports_is_refused() {
    let reasons: BTreeSet<String> = ["ip_limit".to_owned()].into();
    let exp = Exported {
        names: ["blindrelay_connections_rejected_total".to_owned()].into(),
        labels: [(
            "blindrelay_connections_rejected_total".to_owned(),
            [("reason".to_owned(), reasons)].into(),
        )]
        .into(),
    };
    check(
        "test",
        r#"rate(blindrelay_connections_rejected_total{reason="ip_limits"}[5m])"#,
        &exp,
    );
}
