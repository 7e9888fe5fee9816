//! Kafka, the way every slackline service talks to it.
//!
//! [`KafkaSettings`] turns `KAFKA_BOOTSTRAP_SERVERS` and `KAFKA_PROPERTIES` into
//! librdkafka configs with our non-negotiables applied (an idempotent producer with
//! `acks=all` for guarantee 1; manual offset storage for consumers). [`topics`] lists
//! every topic slackline uses with its partitions and configs, and creates them.
//! [`headers`] names the record headers that carry an event's provenance.
//! [`embedded`] runs a local single-node Apache Kafka broker for tests and `dev`.

pub mod embedded;
pub mod headers;
pub mod topics;

use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;
use slackline_service::Env;

/// What can go wrong talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused a configuration or failed a request.
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    /// A topic we need is not in the cluster's metadata.
    #[error("topic {0} does not exist")]
    MissingTopic(String),
    /// Creating a topic failed on the broker.
    #[error("creating topic {topic}: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's error.
        reason: String,
    },
}

/// Connection settings shared by every client of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Extra librdkafka properties (TLS, SASL, tuning), applied last but never over
    /// the properties that guarantee durability.
    pub properties: Vec<(String, String)>,
}

impl KafkaSettings {
    /// Settings for a bootstrap list and no extra properties.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaSettings {
            bootstrap_servers: bootstrap_servers.into(),
            properties: Vec::new(),
        }
    }

    /// Reads `KAFKA_BOOTSTRAP_SERVERS` (required) and `KAFKA_PROPERTIES`
    /// (`key=value;key=value`, optional).
    pub fn from_env(env: &mut Env) -> Self {
        let bootstrap_servers = env.required("KAFKA_BOOTSTRAP_SERVERS");
        let properties = match env.get("KAFKA_PROPERTIES").map(parse_properties) {
            None => Vec::new(),
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                env.problem("KAFKA_PROPERTIES", e);
                Vec::new()
            }
        };
        KafkaSettings {
            bootstrap_servers,
            properties,
        }
    }

    /// The base config: bootstrap servers, a client id, the extra properties.
    pub fn client_config(&self, client_id: &str) -> ClientConfig {
        self.config_with_defaults(client_id, &[])
    }

    /// Bootstrap servers and client id, then `defaults`, then the extra properties
    /// (which may override the defaults).
    fn config_with_defaults(&self, client_id: &str, defaults: &[(&str, String)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", client_id);
        for (k, v) in defaults {
            config.set(*k, v);
        }
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }

    /// A producer config for guarantee 1: idempotent, `acks=all`, and a delivery
    /// timeout so a delivery future always resolves (`message.timeout.ms`).
    pub fn producer_config(&self, client_id: &str, delivery_timeout: Duration) -> ClientConfig {
        let defaults = [
            ("linger.ms", "2".to_owned()),
            ("compression.type", "lz4".to_owned()),
            // Bounded memory: with Kafka down, requests fail fast (503) instead of
            // queueing without limit (librdkafka's default is about 1 GiB).
            ("queue.buffering.max.kbytes", "32768".to_owned()),
        ];
        let mut config = self.config_with_defaults(client_id, &defaults);
        config
            .set(
                "message.timeout.ms",
                delivery_timeout.as_millis().max(1).to_string(),
            )
            // Set last: KAFKA_PROPERTIES may tune, never weaken, durability.
            .set("enable.idempotence", "true")
            .set("acks", "all");
        config
    }

    /// A consumer config for a group: offsets stored by the application only after
    /// the effect is durable, never committed automatically ahead of it.
    pub fn consumer_config(&self, client_id: &str, group_id: &str) -> ClientConfig {
        let defaults = [
            ("auto.offset.reset", "earliest".to_owned()),
            // Bounded read-ahead (librdkafka's default is 64 MiB per consumer), so a
            // service catching up a backlog stays inside its memory limit.
            ("queued.max.messages.kbytes", "16384".to_owned()),
        ];
        let mut config = self.config_with_defaults(client_id, &defaults);
        config
            .set("group.id", group_id)
            .set("enable.auto.offset.store", "false");
        config
    }

    /// Creates an idempotent producer (see [`KafkaSettings::producer_config`]).
    pub fn producer(
        &self,
        client_id: &str,
        delivery_timeout: Duration,
    ) -> Result<FutureProducer, KafkaError> {
        Ok(self.producer_config(client_id, delivery_timeout).create()?)
    }
}

/// Parses `key=value;key=value` (blank entries ignored).
pub fn parse_properties(raw: &str) -> Result<Vec<(String, String)>, String> {
    raw.split(';')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| match entry.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(format!("expected key=value, got {entry:?}")),
        })
        .collect()
}

/// Checks that the cluster answers a metadata request for `topic` within `timeout`
/// and that the topic exists (readiness). Blocking: call from `spawn_blocking`.
pub fn check_topic<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let found = metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if found {
        Ok(())
    } else {
        Err(KafkaError::MissingTopic(topic.to_owned()))
    }
}

/// [`check_topic`] for an async readiness probe: runs the blocking metadata request
/// off the runtime and turns the outcome into the probe's reason.
pub async fn topic_ready(producer: &FutureProducer, topic: &str) -> Result<(), String> {
    let producer = producer.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        check_topic(
            rdkafka::producer::Producer::client(&producer),
            &topic,
            Duration::from_millis(1500),
        )
    })
    .await
    .map_err(|e| format!("kafka check: {e}"))?
    .map_err(|e| format!("kafka: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_and_errors_are_named() {
        assert_eq!(
            parse_properties("security.protocol=SSL; ssl.ca.location = /ca.pem ;").unwrap(),
            vec![
                ("security.protocol".to_owned(), "SSL".to_owned()),
                ("ssl.ca.location".to_owned(), "/ca.pem".to_owned())
            ]
        );
        assert!(parse_properties("novalue").is_err());
        let mut env = Env::from_pairs([("KAFKA_PROPERTIES", "=x")]);
        let _ = KafkaSettings::from_env(&mut env);
        let problems = env.finish().unwrap_err().problems;
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn durability_cannot_be_weakened_by_extra_properties() {
        let settings = KafkaSettings {
            bootstrap_servers: "b:9092".into(),
            properties: parse_properties("acks=1;enable.idempotence=false;linger.ms=20").unwrap(),
        };
        let config = settings.producer_config("t", Duration::from_secs(2));
        assert_eq!(config.get("acks"), Some("all"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("message.timeout.ms"), Some("2000"));
        assert_eq!(config.get("linger.ms"), Some("20"), "tuning is allowed");
    }
}
