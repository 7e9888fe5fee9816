//! The admin port: `/metrics` (Prometheus text), `/healthz` (the process is alive) and
//! `/readyz` (its dependencies answer). Kept apart from the traffic port so a probe or
//! a scrape never waits behind Slack requests, and never shows up in their metrics.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::Shutdown;

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A readiness check: `Ok` when the service can do its work, else the reason.
#[derive(Clone)]
pub struct Readiness(Arc<dyn Fn() -> CheckFuture + Send + Sync>);

impl Readiness {
    /// Ready whenever the process runs.
    pub fn always() -> Self {
        Readiness(Arc::new(|| Box::pin(async { Ok(()) })))
    }

    /// Ready when `check` says so (it is given two seconds).
    pub fn new<F, Fut>(check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Readiness(Arc::new(move || Box::pin(check())))
    }

    async fn check(&self) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(2), (self.0)()).await {
            Ok(result) => result,
            Err(_) => Err("readiness check timed out".into()),
        }
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    readiness: Readiness,
}

/// Serves the admin endpoints on `listener` until `shutdown` fires.
pub fn serve_admin(
    listener: TcpListener,
    registry: Registry,
    readiness: Readiness,
    shutdown: Shutdown,
) -> JoinHandle<std::io::Result<()>> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(AdminState {
            registry,
            readiness,
        });
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await
    })
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut buf = Vec::new();
    let families = state.registry.gather();
    match TextEncoder::new().encode(&families, &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            buf,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    match state.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let registry = Registry::new();
        let counter =
            prometheus::IntCounter::new("slackline_test_total", "a test counter").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc_by(3);
        let ok = Arc::new(AtomicBool::new(false));
        let flag = ok.clone();
        let readiness = Readiness::new(move || {
            let ready = flag.load(Ordering::SeqCst);
            async move {
                if ready {
                    Ok(())
                } else {
                    Err("kafka down".to_owned())
                }
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let server = serve_admin(listener, registry, readiness, shutdown.clone());
        let http = reqwest::Client::new();
        let body = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("slackline_test_total 3"), "{body}");
        let health = http
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        let not_ready = http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(not_ready.status(), 503);
        assert!(not_ready.text().await.unwrap().contains("kafka down"));
        ok.store(true, Ordering::SeqCst);
        let ready = http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
        shutdown.trigger();
        server.await.unwrap().unwrap();
    }
}
