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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: String,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9090".into(),
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

async fn metrics() -> impl IntoResponse {
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
