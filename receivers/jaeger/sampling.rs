//! The Jaeger remote-sampling endpoint, as the Jaeger agent serves it on 5778:
//! - `GET /sampling?service=NAME`: the strategy as proto-JSON with string enums
//!   (`"strategyType":"PROBABILISTIC"`), which current clients expect;
//! - `GET /?service=NAME`: the same with the legacy integer enums (`"strategyType":0`) that old
//!   clients poll.
//!
//! Strategies come from a file in the format of Jaeger's `--sampling.strategies-file`
//! (`service_strategies`, `default_strategy`, `operation_strategies`); unknown services get the
//! default strategy; with no file every service gets probabilistic 0.001. The file is re-read
//! when its modification time changes (checked every `reload_interval`); a file that no longer
//! parses is reported and the previous strategies are kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

/// `type` of a strategy in the file.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `param` is the sampling probability.
    Probabilistic,
    /// `param` is the maximum traces per second.
    Ratelimiting,
}

/// A per-operation strategy (Jaeger serves only probabilistic ones per operation).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationStrategy {
    /// Operation (span) name.
    pub operation: String,
    /// Strategy type.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Probability or rate.
    pub param: f64,
}

/// A service's strategy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceStrategy {
    /// Service name.
    pub service: String,
    /// Strategy type.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Probability or rate.
    pub param: f64,
    /// Per-operation overrides.
    #[serde(default)]
    pub operation_strategies: Vec<OperationStrategy>,
}

/// The default strategy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultStrategy {
    /// Strategy type.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Probability or rate.
    pub param: f64,
    /// Per-operation strategies applied to services without their own.
    #[serde(default)]
    pub operation_strategies: Vec<OperationStrategy>,
}

/// A strategies file.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Strategies {
    /// Per-service strategies.
    #[serde(default)]
    pub service_strategies: Vec<ServiceStrategy>,
    /// The default (probabilistic 0.001 when absent).
    pub default_strategy: Option<DefaultStrategy>,
}

impl Strategies {
    /// Parses and checks a strategies file's text.
    pub fn parse(text: &str) -> Result<Strategies, String> {
        let s: Strategies = serde_json::from_str(text).map_err(|e| format!("invalid strategies file: {e}"))?;
        let check = |kind: Kind, p: f64, what: &str| -> Result<(), String> {
            match kind {
                Kind::Probabilistic if !(0.0..=1.0).contains(&p) => Err(format!("{what}: a probabilistic param must be within [0, 1], got {p}")),
                Kind::Ratelimiting if !(0.0..500.0).contains(&p) => Err(format!("{what}: a ratelimiting param must be within [0, 500), got {p}")),
                _ => Ok(()),
            }
        };
        for ss in &s.service_strategies {
            check(ss.kind, ss.param, &format!("service {}", ss.service))?;
            for os in &ss.operation_strategies {
                check(os.kind, os.param, &format!("service {} operation {}", ss.service, os.operation))?;
            }
        }
        if let Some(d) = &s.default_strategy {
            check(d.kind, d.param, "default_strategy")?;
        }
        Ok(s)
    }

    /// Reads a strategies file.
    pub fn load(path: &Path) -> Result<Strategies, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read strategies file {}: {e}", path.display()))?;
        Strategies::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The response for a service, with string enums (`legacy = false`) or integer ones.
    pub fn response(&self, service: &str, legacy: bool) -> Value {
        let enum_of = |k: Kind| -> Value {
            match (k, legacy) {
                (Kind::Probabilistic, false) => json!("PROBABILISTIC"),
                (Kind::Ratelimiting, false) => json!("RATE_LIMITING"),
                (Kind::Probabilistic, true) => json!(0),
                (Kind::Ratelimiting, true) => json!(1),
            }
        };
        let (kind, param, ops) = match self.service_strategies.iter().find(|s| s.service == service) {
            Some(s) => {
                let ops = if s.operation_strategies.is_empty() {
                    self.default_strategy.as_ref().map(|d| d.operation_strategies.clone()).unwrap_or_default()
                } else {
                    s.operation_strategies.clone()
                };
                (s.kind, s.param, ops)
            }
            None => match &self.default_strategy {
                Some(d) => (d.kind, d.param, d.operation_strategies.clone()),
                None => (Kind::Probabilistic, 0.001, Vec::new()),
            },
        };
        let mut out = json!({ "strategyType": enum_of(kind) });
        match kind {
            Kind::Probabilistic => out["probabilisticSampling"] = json!({ "samplingRate": param }),
            Kind::Ratelimiting => out["rateLimitingSampling"] = json!({ "maxTracesPerSecond": param as i64 }),
        }
        let per_op: Vec<Value> = ops
            .iter()
            .filter(|o| o.kind == Kind::Probabilistic)
            .map(|o| json!({ "operation": o.operation, "probabilisticSampling": { "samplingRate": o.param } }))
            .collect();
        if !per_op.is_empty() {
            let default_p = if kind == Kind::Probabilistic { param } else { self.default_strategy.as_ref().filter(|d| d.kind == Kind::Probabilistic).map(|d| d.param).unwrap_or(0.001) };
            out["operationSampling"] = json!({
                "defaultSamplingProbability": default_p,
                "defaultLowerBoundTracesPerSecond": 0.0,
                "perOperationStrategies": per_op,
            });
        }
        out
    }
}

/// The strategies being served, swapped on reload.
#[derive(Clone)]
pub struct Store {
    current: Arc<RwLock<Arc<Strategies>>>,
    path: Option<PathBuf>,
}

impl Store {
    /// Loads the file (if any) once.
    pub fn open(path: Option<PathBuf>) -> Result<Store, String> {
        let s = match &path {
            Some(p) => Strategies::load(p)?,
            None => Strategies::default(),
        };
        Ok(Store { current: Arc::new(RwLock::new(Arc::new(s))), path })
    }

    fn get(&self) -> Arc<Strategies> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Polls the file every `interval` and swaps in new strategies when it changed and parses.
    pub async fn watch(self, interval: std::time::Duration, shutdown: tokio_util::sync::CancellationToken) {
        let Some(path) = self.path.clone() else { return };
        if interval.is_zero() {
            return;
        }
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut last: Option<SystemTime> = mtime(&path);
        let mut last_text = std::fs::read_to_string(&path).ok();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let now = mtime(&path);
            let text = std::fs::read_to_string(&path).ok();
            if now == last && text == last_text {
                continue;
            }
            last = now;
            last_text = text;
            match Strategies::load(&path) {
                Ok(s) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
                    tracing::info!(message = "Sampling strategies reloaded.", file = %path.display());
                }
                Err(e) => tracing::error!(message = "Sampling strategies not reloaded; keeping the previous ones.", error = %e),
            }
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct ServiceQuery {
    service: Option<String>,
}

fn answer(store: &Store, q: ServiceQuery, legacy: bool) -> Response {
    match q.service.filter(|s| !s.is_empty()) {
        None => (StatusCode::BAD_REQUEST, "'service' parameter must be provided once\n").into_response(),
        Some(service) => axum::Json(store.get().response(&service, legacy)).into_response(),
    }
}

/// The router: `/sampling` (string enums) and `/` (legacy integer enums).
pub fn router(store: Store) -> axum::Router {
    axum::Router::new()
        .route("/sampling", axum::routing::get(|State(s): State<Store>, Query(q): Query<ServiceQuery>| async move { answer(&s, q, false) }))
        .route("/", axum::routing::get(|State(s): State<Store>, Query(q): Query<ServiceQuery>| async move { answer(&s, q, true) }))
        .with_state(store)
}
