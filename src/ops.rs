//! The ops server: `/healthz` (the process is alive), `/readyz` (what the
//! [`StatusBoard`] says: Redis reachable when configured, sink connected,
//! token not refused, no shard stopped, not every shard failing to
//! publish), `/metrics` (Prometheus text format). It reads the status
//! board, never the engine.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::field::ConfigError;
use crate::status::StatusBoard;

/// The `ops` section.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: String,
    /// How long the sink may be unreachable before `/readyz` says 503
    /// (a broker's rolling restart should not take replicas out).
    pub sink_allowance: crate::field::Dur,
    /// How many held shards have series of their own on `/metrics` (lag,
    /// poll interval, rate); every held shard counts in its tenant's
    /// aggregates.
    pub shard_series: usize,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9090".into(),
            sink_allowance: crate::field::Dur(crate::status::DEFAULT_SINK_ALLOWANCE),
            shard_series: crate::telemetry::DEFAULT_SHARD_SERIES,
        }
    }
}

impl OpsConfig {
    pub fn addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::new(
                "ops.listen",
                format!("`{}` is not an address such as 0.0.0.0:9090", self.listen),
            )
        })
    }
}

pub fn router(status: Arc<StatusBoard>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(status)
}

async fn readyz(State(status): State<Arc<StatusBoard>>) -> impl IntoResponse {
    let why = status.not_ready();
    if why.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join("; ")),
        )
    }
}

async fn metrics(State(status): State<Arc<StatusBoard>>) -> impl IntoResponse {
    // What `/readyz` would answer now, as a series alerts can watch.
    metrics::gauge!("cas_bridge_ready").set(if status.not_ready().is_empty() {
        1.0
    } else {
        0.0
    });
    (
        [("content-type", "text/plain; version=0.0.4")],
        crate::telemetry::render(),
    )
}

/// Serves until `cancel` fires. Returns the bound address at once.
pub async fn serve(
    listen: SocketAddr,
    status: Arc<StatusBoard>,
    cancel: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = router(status);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
    });
    Ok((addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Shard;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(status: Arc<StatusBoard>, path: &str) -> (StatusCode, String) {
        let resp = router(status)
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let code = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_follows_the_status_board() {
        let b = Arc::new(StatusBoard::default());
        assert_eq!(get(b.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(b.clone(), "/readyz").await,
            (StatusCode::OK, "ready\n".into())
        );
        let s = Shard::new("box", "dlp");
        b.set_held(vec![s.clone(), Shard::new("box", "ransomware")]);
        b.set_sink_failing(&s, true);
        assert_eq!(
            get(b.clone(), "/readyz").await.0,
            StatusCode::OK,
            "one shard failing is not the process"
        );
        b.set_stopped(&s, "topic refused".into());
        let (code, body) = get(b.clone(), "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("box:dlp stopped: topic refused"), "{body}");
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let t = crate::telemetry::Telemetry::new();
        t.register_all();
        let (code, body) = get(Arc::new(StatusBoard::default()), "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("cas_bridge_sink_errors_total"), "{body}");
        assert!(body.contains("cas_bridge_leases_held"));
    }

    #[test]
    fn listen_address_is_checked() {
        let bad = OpsConfig {
            listen: "nine".into(),
            ..OpsConfig::default()
        };
        assert_eq!(bad.addr().unwrap_err().field, "ops.listen");
        assert!(OpsConfig::default().addr().is_ok());
    }
}
