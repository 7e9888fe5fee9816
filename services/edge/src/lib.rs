//! The edge: the only slackline service Slack talks to.
//!
//! `POST /slack/events` verifies Slack's signature over the raw bytes, answers
//! `url_verification`, and for every other verified body writes it to the archive and
//! produces it unchanged to `slack.events.raw`, keyed by channel, before answering
//! 200 (guarantee 1). Anything that fails or takes too long answers 503 so that Slack
//! retries; a verified body is never refused for its content. Metrics and probes are
//! on a separate admin port.

pub mod config;
mod handler;
pub mod metrics;
mod server;
mod throttle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use axum::Router;
use prometheus::Registry;
use rdkafka::producer::Producer;
use slackline_archive::Archive;
use slackline_service::{serve_admin, Readiness, Shutdown};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{EdgeConfig, Limits};
use handler::EdgeState;
pub use metrics::EdgeMetrics;

/// Why the edge could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// Opening the archive failed.
    #[error(transparent)]
    Archive(#[from] slackline_archive::ArchiveError),
    /// Creating the producer failed.
    #[error(transparent)]
    Kafka(#[from] slackline_kafka::KafkaError),
    /// Binding or serving a port failed.
    #[error("{what} {addr}: {source}")]
    Io {
        /// Which port.
        what: &'static str,
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Registering metrics failed (a programming error).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A server task panicked.
    #[error("edge task failed: {0}")]
    Task(String),
    /// On shutdown, the producer's queue did not empty within [`FLUSH_BUDGET`]: those
    /// records belong to requests that were answered 503 (every 200 waited for its
    /// acknowledgement), so Slack retries them; the process exits non-zero.
    #[error("producer flush on shutdown incomplete: {0}")]
    Flush(String),
}

/// How long the producer's queue may take to empty on shutdown, after the grace
/// (within `slackline_service::shutdown::STOP_MARGIN`).
pub const FLUSH_BUDGET: Duration = Duration::from_secs(5);

/// A running edge.
pub struct Edge {
    /// Where Slack's requests are served (the bound address, also for port 0).
    pub addr: SocketAddr,
    /// Where the admin endpoints are served.
    pub admin_addr: SocketAddr,
    /// The metrics registry (tests read counters from it).
    pub registry: Registry,
    task: JoinHandle<Result<(), EdgeError>>,
}

/// The edge producer's `linger.ms` unless `KAFKA_PROPERTIES` sets one.
pub const EDGE_LINGER_MS: &str = "0.5";

impl Edge {
    /// Opens the archive and the producer, binds both ports and starts serving. The
    /// edge stops when `shutdown` fires: it stops accepting connections, lets
    /// in-flight requests finish (within `EDGE_SHUTDOWN_GRACE_MS`), then flushes the
    /// producer (within [`FLUSH_BUDGET`]); [`Edge::wait`] returns
    /// [`EdgeError::Flush`] when records were left unacknowledged.
    pub async fn start(config: EdgeConfig, shutdown: Shutdown) -> Result<Edge, EdgeError> {
        let archive = Archive::open_with(&config.archive_url, &config.s3, &config.archive).await?;
        // Each request waits for its record's acknowledgement, so the edge lingers
        // less than the other producers (2 ms): 0.5 ms cut the mean delivery from
        // 2.6 ms to 1.7 ms in the edge benchmark (`edge_load`). KAFKA_PROPERTIES may
        // still set it.
        let mut kafka = config.kafka.clone();
        kafka
            .properties
            .insert(0, ("linger.ms".to_owned(), EDGE_LINGER_MS.to_owned()));
        let producer = kafka.producer("slackline-edge", config.deadline)?;
        let registry = Registry::new();
        let metrics = EdgeMetrics::new(&registry)?;
        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| EdgeError::Io {
                    what,
                    addr: addr.to_string(),
                    source,
                })
        };
        let listener = bind("binding EDGE_ADDR", config.edge_addr).await?;
        let admin_listener = bind("binding ADMIN_ADDR", config.admin_addr).await?;
        let local = |l: &TcpListener, what| {
            l.local_addr().map_err(|source| EdgeError::Io {
                what,
                addr: String::new(),
                source,
            })
        };
        let addr = local(&listener, "reading EDGE_ADDR")?;
        let admin_addr = local(&admin_listener, "reading ADMIN_ADDR")?;

        let readiness = readiness(archive.clone(), producer.clone(), config.raw_topic.clone());
        let admin = serve_admin(
            admin_listener,
            registry.clone(),
            readiness,
            shutdown.clone(),
        );
        let limits = config.limits;
        let state = Arc::new(EdgeState::new(
            config.secrets,
            archive,
            producer.clone(),
            config.raw_topic,
            config.deadline,
            &limits,
            metrics.clone(),
        ));
        let app = router(state, config.max_body_bytes);
        tracing::info!(%addr, %admin_addr, "edge listening");
        let grace = config.shutdown_grace;
        let task = tokio::spawn(async move {
            let drain_signal = shutdown.clone();
            // Read timeouts and the connection cap: see server.rs.
            let server = server::serve(listener, app, limits, metrics, async move {
                drain_signal.wait().await
            });
            let served = serve_until_drained(server, &shutdown, grace).await;
            // If serving failed, stop the rest of the process too (admin included), so
            // the process exits non-zero and is restarted instead of looking healthy.
            shutdown.trigger();
            // Every 200 already waited for its delivery; this flushes what requests
            // that timed out (answered 503, so Slack retries them) left in the queue.
            // Bounded, whatever Kafka does: librdkafka's flush takes a timeout.
            let flushed = tokio::task::spawn_blocking(move || producer.flush(FLUSH_BUDGET)).await;
            let flushed = match flushed {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(EdgeError::Flush(format!(
                    "records still unacknowledged after {FLUSH_BUDGET:?}: {e}"
                ))),
                Err(e) => Err(EdgeError::Task(e.to_string())),
            };
            let _ = admin.await;
            if let Err(e) = &flushed {
                tracing::error!(error = %e, "edge stopped without flushing its producer");
            } else {
                tracing::info!("edge stopped");
            }
            served.and(flushed)
        });
        Ok(Edge {
            addr,
            admin_addr,
            registry,
            task,
        })
    }

    /// Waits for the edge to stop.
    pub async fn wait(self) -> Result<(), EdgeError> {
        self.task
            .await
            .map_err(|e| EdgeError::Task(e.to_string()))?
    }
}

/// Runs the server; once shutdown fires, gives in-flight requests `grace` to finish.
async fn serve_until_drained<F>(
    server: F,
    shutdown: &Shutdown,
    grace: Duration,
) -> Result<(), EdgeError>
where
    F: std::future::IntoFuture<Output = std::io::Result<()>>,
{
    let server = server.into_future();
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        () = async { shutdown.wait().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "in-flight requests did not finish within the grace period");
            Ok(())
        }
    };
    result.map_err(|source| EdgeError::Io {
        what: "serving",
        addr: String::new(),
        source,
    })
}

fn router(state: Arc<EdgeState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/slack/events", post(handler::slack_events))
        // Inside the counting: the 503s it answers are counted by status too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handler::limit_in_flight,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handler::count_responses,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

fn readiness(
    archive: Archive,
    producer: rdkafka::producer::FutureProducer,
    topic: String,
) -> Readiness {
    Readiness::new(move || {
        let archive = archive.clone();
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            archive.check().await.map_err(|e| format!("archive: {e}"))?;
            slackline_kafka::topic_ready(&producer, &topic).await
        }
    })
}

/// Runs the edge until `shutdown` fires. A signal during the start (an S3 endpoint
/// that does not answer, say) stops it there.
pub async fn run(config: EdgeConfig, shutdown: Shutdown) -> Result<(), EdgeError> {
    match shutdown
        .unless_fired(Edge::start(config, shutdown.clone()))
        .await
    {
        Some(edge) => edge?.wait().await,
        None => {
            tracing::info!("edge stopped while starting");
            Ok(())
        }
    }
}
