//! The frame of a consumer-group service (thread-state, timeline-writer, notifier):
//! the admin server (`/metrics`, `/healthz`, `/readyz`) and one consumer runtime,
//! stopping together. A service builds its handler and readiness check, then calls
//! [`GroupService::start`]; its `main.rs` only reads the config and waits.

use std::future::Future;
use std::net::SocketAddr;

use prometheus::Registry;
use slackline_kafka::KafkaSettings;
use slackline_service::{serve_admin, Readiness, Shutdown};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::{ConsumerError, ConsumerMetrics, ConsumerRuntime, Event, HandlerError, RuntimeConfig};

/// A running consumer-group service.
pub struct GroupService {
    /// The admin address.
    pub admin_addr: SocketAddr,
    /// The metrics registry (the runtime's families and the service's own).
    pub registry: Registry,
    task: JoinHandle<Result<(), ConsumerError>>,
}

impl GroupService {
    /// Binds `admin_addr`, starts the consumer runtime with `handler`, and serves the
    /// admin endpoints with `readiness` until `shutdown` fires. `registry` may
    /// already hold the service's own metrics; the runtime's are added to it. When the
    /// runtime stops with an error, `shutdown` fires, so the process exits.
    ///
    /// # Errors
    ///
    /// Binding the admin port, registering metrics, or starting the runtime.
    pub async fn start<H, Fut>(
        kafka: &KafkaSettings,
        runtime: RuntimeConfig,
        admin_addr: SocketAddr,
        registry: Registry,
        readiness: Readiness,
        handler: H,
        shutdown: Shutdown,
    ) -> Result<GroupService, ConsumerError>
    where
        H: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let listener = TcpListener::bind(admin_addr)
            .await
            .map_err(|e| ConsumerError::Config(format!("binding ADMIN_ADDR {admin_addr}: {e}")))?;
        let admin_addr = listener
            .local_addr()
            .map_err(|e| ConsumerError::Config(format!("ADMIN_ADDR {admin_addr}: {e}")))?;
        let metrics = ConsumerMetrics::register(&registry)?;
        let handle =
            ConsumerRuntime::start(kafka, runtime, handler, &metrics, shutdown.clone()).await?;
        let admin = serve_admin(listener, registry.clone(), readiness, shutdown.clone());
        let task = tokio::spawn(async move {
            let result = handle.wait().await;
            if result.is_err() {
                shutdown.trigger();
            }
            shutdown.wait().await;
            let _ = admin.await;
            result
        });
        Ok(GroupService {
            admin_addr,
            registry,
            task,
        })
    }

    /// Waits until the service has stopped and its offsets are committed.
    ///
    /// # Errors
    ///
    /// The runtime's error, when it stopped with one.
    pub async fn wait(self) -> Result<(), ConsumerError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ConsumerError::Task(e.to_string())),
        }
    }
}
