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

/// What can go wrong talking to Kafka. Neither its message nor its `Debug` prints the
/// value of a secret-looking property librdkafka refused.
#[derive(thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused a configuration or failed a request. The message hides the
    /// value of a refused secret-looking property (see [`client_error`]); the
    /// librdkafka error is therefore not exposed as the `source`, whose message would
    /// print it.
    #[error("kafka: {}", client_error(.0))]
    Client(rdkafka::error::KafkaError),
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

impl std::fmt::Debug for KafkaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KafkaError::Client(error) => {
                f.debug_tuple("Client").field(&client_error(error)).finish()
            }
            KafkaError::MissingTopic(topic) => f.debug_tuple("MissingTopic").field(topic).finish(),
            KafkaError::CreateTopic { topic, reason } => f
                .debug_struct("CreateTopic")
                .field("topic", topic)
                .field("reason", reason)
                .finish(),
        }
    }
}

impl From<rdkafka::error::KafkaError> for KafkaError {
    fn from(error: rdkafka::error::KafkaError) -> Self {
        KafkaError::Client(error)
    }
}

/// `error`'s message, except that a configuration error about a secret-looking
/// property (`sasl.password`...: [`slackline_service::redact::is_secret_name`]) does
/// not print its value: librdkafka's own message repeats a refused value ("Invalid
/// value ... for configuration property ...", or a property this build does not
/// support), and rdkafka appends the key and the value.
pub fn client_error(error: &rdkafka::error::KafkaError) -> String {
    use slackline_service::redact::{is_secret_name, REDACTED};
    match error {
        rdkafka::error::KafkaError::ClientConfig(_, description, key, value)
            if is_secret_name(key) =>
        {
            let description = if value.is_empty() {
                description.clone()
            } else {
                description.replace(value.as_str(), REDACTED)
            };
            format!("Client config error: {description} {key} {REDACTED}")
        }
        other => other.to_string(),
    }
}

/// Connection settings shared by every client of a service. Its `Debug` hides the
/// values of secret-looking properties (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, `sasl.jaas.config`, anything named `*password*`
/// or `*secret*`: [`slackline_service::redact::is_secret_name`]) and the passwords of
/// URLs, so the settings may be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Extra librdkafka properties (TLS, SASL, tuning), applied last but never over
    /// the properties that guarantee durability.
    pub properties: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Properties<'a>(&'a [(String, String)]);
        impl std::fmt::Debug for Properties<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_list()
                    .entries(
                        self.0
                            .iter()
                            .map(|(k, v)| (k, slackline_service::redact::value(k, v))),
                    )
                    .finish()
            }
        }
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("properties", &Properties(&self.properties))
            .finish()
    }
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

/// Parses `key=value;key=value` (blank entries ignored). A malformed entry is named
/// by its position, not echoed: it may hold a secret (`=hunter2`,
/// `sasl.password:hunter2`), and the error is printed at start.
pub fn parse_properties(raw: &str) -> Result<Vec<(String, String)>, String> {
    raw.split(';')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
        .map(|(i, entry)| match entry.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(format!("entry {} is not key=value", i + 1)),
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
        // A malformed entry is not echoed: it may be a secret.
        for bad in ["=hunter2-pw", "sasl.password:hunter2-pw"] {
            let raw = format!("security.protocol=SSL;{bad}");
            let err = parse_properties(&raw).unwrap_err();
            assert_eq!(err, "entry 2 is not key=value");
        }
    }

    #[test]
    fn debug_hides_secret_properties() {
        let secrets = [
            ("sasl.password", "sasl-pw-1"),
            ("ssl.key.password", "key-pw-2"),
            ("ssl.keystore.password", "keystore-pw-3"),
            ("sasl.oauthbearer.client.secret", "oauth-secret-4"),
            (
                "sasl.jaas.config",
                "org.apache.kafka.common.security.plain.PlainLoginModule required \
                 username=\"u\" password=\"jaas-pw-5\";",
            ),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY----- pem-6"),
            ("my.custom.secret", "custom-7"),
        ];
        let mut properties: Vec<(String, String)> = secrets
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        properties.push(("sasl.username".into(), "svc-user".into()));
        properties.push((
            "sasl.oauthbearer.token.endpoint.url".into(),
            "https://client:url-pw-8@idp.example.com/token".into(),
        ));
        let settings = KafkaSettings {
            bootstrap_servers: "b1:9093,b2:9093".into(),
            properties,
        };
        let debug = format!("{settings:?}");
        for (name, value) in secrets {
            assert!(debug.contains(name), "{name} is named: {debug}");
            assert!(!debug.contains(value), "{name} leaked: {debug}");
        }
        for leaked in ["-pw-", "pem-6", "custom-7", "url-pw-8"] {
            assert!(!debug.contains(leaked), "{leaked}: {debug}");
        }
        assert!(debug.contains("svc-user"), "{debug}");
        assert!(debug.contains("b1:9093,b2:9093"), "{debug}");
        // The pretty form hides them as well.
        let pretty = format!("{settings:#?}");
        assert!(!pretty.contains("sasl-pw-1"), "{pretty}");
    }

    #[test]
    fn a_refused_secret_property_is_not_printed() {
        let settings = KafkaSettings {
            bootstrap_servers: "127.0.0.1:1".into(),
            properties: vec![("sasl.password".into(), String::new())],
        };
        // librdkafka refuses an unknown value of a known property, and repeats it.
        let mut config = settings.client_config("t");
        config.set("security.protocol", "not-a-protocol-pw-9");
        let raw = config
            .create::<rdkafka::producer::BaseProducer>()
            .err()
            .expect("refused");
        assert!(raw.to_string().contains("pw-9"), "{raw}");
        assert!(
            KafkaError::from(raw).to_string().contains("pw-9"),
            "not a secret-looking name: shown"
        );
        let secret = rdkafka::error::KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"hunter2-pw\" for configuration property \"ssl.key.password\"".into(),
            "ssl.key.password".into(),
            "hunter2-pw".into(),
        );
        assert!(
            secret.to_string().contains("hunter2-pw"),
            "rdkafka prints it"
        );
        let error = KafkaError::from(secret);
        let shown = error.to_string();
        assert!(!shown.contains("hunter2-pw"), "{shown}");
        assert!(shown.contains("ssl.key.password <redacted>"), "{shown}");
        let debug = format!("{error:?}");
        assert!(!debug.contains("hunter2-pw"), "{debug}");
        assert!(
            std::error::Error::source(&error).is_none(),
            "no source to print it"
        );
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
