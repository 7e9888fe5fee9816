//! The frame of a consumer-group service (thread-state, timeline-writer, notifier):
//! the admin server (`/metrics`, `/healthz`, `/readyz`) and one consumer runtime,
//! stopping together. A service builds its handler and readiness check, then calls
//! [`GroupService::start`]; its `main.rs` only reads the config and waits.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus::Registry;
use slackline_kafka::KafkaSettings;
use slackline_service::{serve_admin, Env, Readiness, Shutdown};
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

fn millis_list(env: &mut Env, name: &str) -> Option<Vec<Duration>> {
    let raw = env.get(name)?.to_owned();
    let parsed: Result<Vec<Duration>, _> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().map(Duration::from_millis))
        .collect();
    match parsed {
        Ok(list) if !list.is_empty() => Some(list),
        Ok(_) => {
            env.problem(name, "must list at least one delay in milliseconds");
            None
        }
        Err(e) => {
            env.problem(name, format!("comma-separated milliseconds expected: {e}"));
            None
        }
    }
}

impl RuntimeConfig {
    /// The runtime's configuration from the environment, with `group` and `source`
    /// as the defaults of `GROUP_ID` and `SOURCE_TOPIC`: `RETRY_TOPIC` and
    /// `DLQ_TOPIC` (default `<group>.retry`, `<group>.dlq`), `RETRY_DELAYS_MS`
    /// (comma-separated delays of the retry rounds), `QUICK_RETRIES`,
    /// `MAX_CONCURRENT_KEYS`.
    pub fn from_env(env: &mut Env, group: &str, source: &str) -> RuntimeConfig {
        let group = env.string_or("GROUP_ID", group);
        let mut config = RuntimeConfig::new(group, env.string_or("SOURCE_TOPIC", source));
        if let Some(topic) = env.get("RETRY_TOPIC") {
            config.retry_topic = topic.to_owned();
        }
        if let Some(topic) = env.get("DLQ_TOPIC") {
            config.dlq_topic = topic.to_owned();
        }
        if let Some(delays) = millis_list(env, "RETRY_DELAYS_MS") {
            config.retry_delays = delays;
        }
        config.quick_retries = env.parse_or("QUICK_RETRIES", config.quick_retries);
        config.max_concurrent_keys =
            env.parse_or("MAX_CONCURRENT_KEYS", config.max_concurrent_keys);
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_config_from_env() {
        let mut env = Env::from_pairs([("RETRY_DELAYS_MS", "100, 2000"), ("QUICK_RETRIES", "1")]);
        let config = RuntimeConfig::from_env(&mut env, "notifier", "slack.messages.v1");
        env.finish().unwrap();
        assert_eq!(config.group_id, "notifier");
        assert_eq!(config.retry_topic, "notifier.retry");
        assert_eq!(config.dlq_topic, "notifier.dlq");
        assert_eq!(
            config.retry_delays,
            vec![Duration::from_millis(100), Duration::from_secs(2)]
        );
        assert_eq!(config.quick_retries, 1);
    }

    #[test]
    fn bad_delays_are_named() {
        let mut env = Env::from_pairs([("RETRY_DELAYS_MS", "1s")]);
        let _ = RuntimeConfig::from_env(&mut env, "g", "t");
        let err = env.finish().unwrap_err().to_string();
        assert!(err.contains("RETRY_DELAYS_MS"), "{err}");
    }
}
