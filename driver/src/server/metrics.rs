//! Prometheus metrics of `nvtier serve` on `metrics_address` (off by
//! default): `GET /metrics` in the OpenMetrics text format.
//!
//! Gauges are read from the store at each scrape (tiers, budget, hot and
//! metadata bytes, layers, images, fallbacks, pending write-back); counters
//! count what the daemon did since it started (engine pulls, migrations,
//! repairs, profile pushes, recordings).

use crate::error::{Error, Result};
use crate::store::Store;
use crate::tier::TierKind;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use tokio::net::TcpListener;

/// `result` = `ok` | `error` (or `fallback` for engine pulls).
pub type ResultLabel = Vec<(String, String)>;

fn result(r: &str) -> ResultLabel {
    vec![("result".to_string(), r.to_string())]
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    pmem_used: Gauge,
    pmem_budget: Gauge,
    pmem_effective_budget: Gauge,
    pmem_hot: Gauge,
    pmem_meta: Gauge,
    pmem_layer_bytes: Gauge,
    pmem_retired: Gauge,
    disk_layer_bytes: Gauge,
    layers: Family<Vec<(String, String)>, Gauge>,
    tier_available: Family<Vec<(String, String)>, Gauge>,
    images: Gauge,
    engine_fallback_images: Gauge,
    unsynced_layers: Gauge,
    engine_pulls: Family<ResultLabel, Counter>,
    registry_profiles_used: Counter,
    migrations: Family<ResultLabel, Counter>,
    migrated_bytes: Counter,
    relocated_bytes: Counter,
    repairs: Family<ResultLabel, Counter>,
    profile_pushes: Family<ResultLabel, Counter>,
    recordings: Family<ResultLabel, Counter>,
    recordings_active: Gauge,
    recorded_files: Counter,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("nvtier");
        let m = Metrics {
            registry: Registry::default(),
            pmem_used: Gauge::default(),
            pmem_budget: Gauge::default(),
            pmem_effective_budget: Gauge::default(),
            pmem_hot: Gauge::default(),
            pmem_meta: Gauge::default(),
            pmem_layer_bytes: Gauge::default(),
            pmem_retired: Gauge::default(),
            disk_layer_bytes: Gauge::default(),
            layers: Family::default(),
            tier_available: Family::default(),
            images: Gauge::default(),
            engine_fallback_images: Gauge::default(),
            unsynced_layers: Gauge::default(),
            engine_pulls: Family::default(),
            registry_profiles_used: Counter::default(),
            migrations: Family::default(),
            migrated_bytes: Counter::default(),
            relocated_bytes: Counter::default(),
            repairs: Family::default(),
            profile_pushes: Family::default(),
            recordings: Family::default(),
            recordings_active: Gauge::default(),
            recorded_files: Counter::default(),
        };
        let r = &mut registry;
        r.register(
            "pmem_used_bytes",
            "pmem charged to the budget: layer bases, metadata layers, hot copies, retired copies",
            m.pmem_used.clone(),
        );
        r.register(
            "pmem_budget_bytes",
            "the configured pmem budget",
            m.pmem_budget.clone(),
        );
        r.register(
            "pmem_effective_budget_bytes",
            "the budget in force (0 while the pmem tier is missing)",
            m.pmem_effective_budget.clone(),
        );
        r.register(
            "pmem_hot_bytes",
            "hot data copies on pmem",
            m.pmem_hot.clone(),
        );
        r.register(
            "pmem_meta_bytes",
            "metadata layers on pmem",
            m.pmem_meta.clone(),
        );
        r.register(
            "pmem_layer_bytes",
            "whole layer bases on pmem",
            m.pmem_layer_bytes.clone(),
        );
        r.register(
            "pmem_retired_bytes",
            "retired copies still mounted",
            m.pmem_retired.clone(),
        );
        r.register(
            "disk_layer_bytes",
            "layer bases on the disk tier",
            m.disk_layer_bytes.clone(),
        );
        r.register("layers", "stored layers, by tier", m.layers.clone());
        r.register(
            "tier_available",
            "1 when the tier's directory is present and is the recorded one",
            m.tier_available.clone(),
        );
        r.register("images", "images in the store", m.images.clone());
        r.register(
            "engine_fallback_images",
            "images an engine pulled without nvtier (containerd unpacked them itself)",
            m.engine_fallback_images.clone(),
        );
        r.register(
            "unsynced_layers",
            "disk-tier layers whose write-back is pending",
            m.unsynced_layers.clone(),
        );
        r.register(
            "engine_pulls",
            "pulls for containerd/Docker/CRI, by result (ok or fallback)",
            m.engine_pulls.clone(),
        );
        r.register(
            "registry_profiles_used",
            "engine pulls tiered with a hot profile from the registry",
            m.registry_profiles_used.clone(),
        );
        r.register(
            "migrations",
            "background migrations, by result",
            m.migrations.clone(),
        );
        r.register(
            "migrated_bytes",
            "bytes copied to pmem by migrations",
            m.migrated_bytes.clone(),
        );
        r.register(
            "relocated_bytes",
            "layer-base bytes moved from pmem to disk by migrations",
            m.relocated_bytes.clone(),
        );
        r.register(
            "repairs",
            "background repairs that restored content, by result",
            m.repairs.clone(),
        );
        r.register(
            "profile_pushes",
            "profiles pushed to the registry, by result",
            m.profile_pushes.clone(),
        );
        r.register(
            "recordings",
            "container cold starts recorded, by result",
            m.recordings.clone(),
        );
        r.register(
            "recordings_active",
            "container cold starts being recorded now",
            m.recordings_active.clone(),
        );
        r.register(
            "recorded_files",
            "files seen by finished recordings (a file counts once per recording)",
            m.recorded_files.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn engine_pull(&self, ok: bool, used_registry_profile: bool) {
        self.engine_pulls
            .get_or_create(&result(if ok { "ok" } else { "fallback" }))
            .inc();
        if used_registry_profile {
            self.registry_profiles_used.inc();
        }
    }

    pub fn migration(&self, ok: bool, copied: u64, relocated: u64) {
        self.migrations
            .get_or_create(&result(if ok { "ok" } else { "error" }))
            .inc();
        self.migrated_bytes.inc_by(copied);
        self.relocated_bytes.inc_by(relocated);
    }

    pub fn repair(&self, ok: bool) {
        self.repairs
            .get_or_create(&result(if ok { "ok" } else { "error" }))
            .inc();
    }

    pub fn profile_push(&self, ok: bool) {
        self.profile_pushes
            .get_or_create(&result(if ok { "ok" } else { "error" }))
            .inc();
    }

    /// A finished recording (`files` = `None`: it failed).
    pub fn recording(&self, files: Option<usize>) {
        self.recordings
            .get_or_create(&result(if files.is_some() { "ok" } else { "error" }))
            .inc();
        self.recorded_files.inc_by(files.unwrap_or(0) as u64);
    }

    /// Read the gauges from the store.
    fn refresh(&self, store: &Store) -> Result<()> {
        let g = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        self.pmem_used.set(g(store.pmem_used()?));
        self.pmem_budget.set(g(store.cfg.pmem_budget));
        self.pmem_effective_budget.set(g(store.pmem_budget()));
        let u = crate::tiering::pmem_use(store)?;
        self.pmem_hot.set(g(u.hot_bytes));
        self.pmem_meta.set(g(u.meta_bytes));
        self.pmem_retired.set(g(u.retired_bytes));
        self.pmem_layer_bytes.set(g(store.pmem_layer_bytes()?));
        let layers = store.layers()?;
        for tier in [TierKind::Pmem, TierKind::Disk] {
            let on: Vec<_> = layers.iter().filter(|l| l.tier == tier).collect();
            self.layers
                .get_or_create(&vec![("tier".to_string(), tier.to_string())])
                .set(g(on.len() as u64));
            if tier == TierKind::Disk {
                self.disk_layer_bytes
                    .set(g(on.iter().map(|l| l.charged_bytes).sum()));
            }
        }
        self.tier_available
            .get_or_create(&vec![("tier".to_string(), "pmem".to_string())])
            .set(i64::from(store.pmem_available()));
        self.tier_available
            .get_or_create(&vec![("tier".to_string(), "disk".to_string())])
            .set(i64::from(store.disk.root.is_dir()));
        self.images.set(g(store.images()?.len() as u64));
        self.engine_fallback_images
            .set(g(store.fallbacks()?.len() as u64));
        self.unsynced_layers.set(g(store.unsynced()?.len() as u64));
        self.recordings_active
            .set(g(crate::record::Recorder::in_progress(store).len() as u64));
        Ok(())
    }

    /// The OpenMetrics text of every metric, gauges read now.
    pub fn render(&self, store: &Store) -> Result<String> {
        self.refresh(store)?;
        let mut out = String::new();
        encode(&mut out, &self.registry).map_err(|e| Error::Other(format!("metrics: {e}")))?;
        Ok(out)
    }
}

/// The daemon's metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn handle(
    store: Store,
    req: Request<hyper::body::Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: StatusCode, ct: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(ct) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.uri().path() != "/metrics" {
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "nvtier serves only /metrics\n".into(),
        ));
    }
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        ));
    }
    let r = tokio::task::spawn_blocking(move || metrics().render(&store)).await;
    Ok(match r {
        Ok(Ok(text)) => reply(StatusCode::OK, CONTENT_TYPE, text),
        Ok(Err(e)) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("metrics task: {e}\n"),
        ),
    })
}

/// Serve `GET /metrics` on `listener` until an accept error.
pub async fn serve_metrics(listener: TcpListener, store: Store) -> Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                tracing::warn!(%e, "metrics accept; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(Error::Other(format!("metrics socket accept: {e}"))),
        };
        let s = store.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%e, "metrics connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_every_metric_with_store_values() {
        let (_d, store) = crate::testutil::temp_store("64M");
        let m = Metrics::new();
        m.engine_pull(true, true);
        m.engine_pull(false, false);
        m.migration(true, 100, 7);
        m.profile_push(false);
        let text = m.render(&store).expect("render");
        for line in [
            "nvtier_pmem_budget_bytes 67108864",
            "nvtier_pmem_used_bytes 0",
            "nvtier_images 0",
            "nvtier_layers{tier=\"pmem\"} 0",
            "nvtier_tier_available{tier=\"pmem\"} 1",
            "nvtier_engine_pulls_total{result=\"ok\"} 1",
            "nvtier_engine_pulls_total{result=\"fallback\"} 1",
            "nvtier_registry_profiles_used_total 1",
            "nvtier_migrations_total{result=\"ok\"} 1",
            "nvtier_migrated_bytes_total 100",
            "nvtier_relocated_bytes_total 7",
            "nvtier_profile_pushes_total{result=\"error\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(text.contains("# HELP nvtier_pmem_hot_bytes"));
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
