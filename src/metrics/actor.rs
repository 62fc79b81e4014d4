//! The metrics actor: samples gauges on `METRICS_COLLECTION_INTERVAL_MS`
//! and renders the registry as Prometheus text or as the seed's JSON.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use prometheus::proto::MetricType;
use prometheus::{Encoder, TextEncoder};
use serde_json::{json, Map, Value};

use super::{resident_memory_bytes, Metrics};

pub struct MetricsActor {
    metrics: Metrics,
    started: Instant,
    interval: Duration,
}

impl MetricsActor {
    pub fn new(metrics: Metrics, started: Instant, interval: Duration) -> Self {
        MetricsActor {
            metrics,
            started,
            interval,
        }
    }

    fn sample(&self) {
        self.metrics
            .uptime_seconds
            .set(self.started.elapsed().as_secs() as i64);
        self.metrics
            .resident_memory_bytes
            .set(resident_memory_bytes() as i64);
    }

    fn render_text(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.metrics.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    fn render_json(&self) -> String {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut out = Map::new();
        for family in self.metrics.registry.gather() {
            let kind = match family.get_field_type() {
                MetricType::COUNTER => "counter",
                MetricType::GAUGE => "gauge",
                MetricType::HISTOGRAM => "histogram",
                MetricType::SUMMARY => "summary",
                MetricType::UNTYPED => "untyped",
            };
            let mut total = 0.0;
            let mut series = Vec::new();
            for m in family.get_metric() {
                let value = match family.get_field_type() {
                    MetricType::COUNTER => m.get_counter().get_value(),
                    MetricType::GAUGE => m.get_gauge().get_value(),
                    MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
                    MetricType::SUMMARY => m.get_summary().sample_count() as f64,
                    MetricType::UNTYPED => 0.0,
                };
                total += value;
                if !m.get_label().is_empty() {
                    let labels: Map<String, Value> = m
                        .get_label()
                        .iter()
                        .map(|l| (l.name().to_owned(), Value::from(l.value())))
                        .collect();
                    series.push(json!({"labels": labels, "value": value}));
                }
            }
            let mut entry = json!({"type": kind, "value": total, "timestamp": ts});
            if !series.is_empty() {
                entry["series"] = Value::from(series);
            }
            out.insert(family.name().to_owned(), entry);
        }
        json!({"timestamp": ts, "metrics": out}).to_string()
    }
}

impl Actor for MetricsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.sample();
        ctx.run_interval(self.interval, |act, _| act.sample());
    }
}

/// Renders all metrics; `json` selects the seed's JSON shape.
#[derive(Message)]
#[rtype(result = "String")]
pub struct Render {
    pub json: bool,
}

impl Handler<Render> for MetricsActor {
    type Result = String;

    fn handle(&mut self, msg: Render, _: &mut Self::Context) -> String {
        self.sample();
        if msg.json {
            self.render_json()
        } else {
            self.render_text()
        }
    }
}
