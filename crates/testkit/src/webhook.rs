//! A webhook receiver on a real socket (127.0.0.1, a free port) that records every
//! JSON body posted to it and can be told to fail (503) for a while, as a Slack or
//! Discord webhook that is down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};

#[derive(Clone, Default)]
struct Shared {
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    failing: Arc<AtomicBool>,
    refused: Arc<Mutex<u64>>,
}

/// A running receiver; it stops when dropped.
pub struct WebhookReceiver {
    /// The URL to post to.
    pub url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

async fn receive(State(shared): State<Shared>, Json(body): Json<serde_json::Value>) -> StatusCode {
    if shared.failing.load(Ordering::SeqCst) {
        *shared.refused.lock().expect("lock") += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    shared.bodies.lock().expect("lock").push(body);
    StatusCode::NO_CONTENT
}

impl WebhookReceiver {
    /// Starts a receiver answering 204 to every POST on any path.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub async fn start() -> WebhookReceiver {
        let shared = Shared::default();
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver");
        let addr = listener.local_addr().expect("receiver address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver {
            url: format!("http://{addr}/hook"),
            shared,
            task,
        }
    }

    /// Answer 503 (and record nothing) while `failing` is true.
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// The bodies received so far, in arrival order.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.shared.bodies.lock().expect("lock").clone()
    }

    /// How many requests were refused with 503.
    pub fn refused(&self) -> u64 {
        *self.shared.refused.lock().expect("lock")
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
