//! How a service tunes its consumer runtime.

use std::time::Duration;

use slackline_service::Env;

use crate::ConsumerError;

/// The runtime's configuration for one consumer group. [`RuntimeConfig::new`] gives
/// the defaults; fields are public so a service (or a test) overrides what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// The consumer group id; also names the retry and DLQ topics by default.
    pub group_id: String,
    /// The topic whose records are handled.
    pub source_topic: String,
    /// The group's retry topic (default `<group>.retry`). Must have as many partitions
    /// as the source topic.
    pub retry_topic: String,
    /// The group's DLQ topic (default `<group>.dlq`); any partition count.
    pub dlq_topic: String,
    /// In-process retries of a retryable failure before the event goes to the retry
    /// topic (default 3; each delivery round gets them again).
    pub quick_retries: u32,
    /// Wait before the first quick retry, doubled for each next one (default 100 ms).
    pub quick_backoff: Duration,
    /// Delays before each delayed retry round from the retry topic (default 5 s,
    /// 30 s, 2 min, 10 min, 30 min). After the last one fails, the event goes to the
    /// DLQ. Empty: retryable failures go to the DLQ after the quick retries.
    pub retry_delays: Vec<Duration>,
    /// How many keys may run their handler at the same time (default 64).
    pub max_concurrent_keys: usize,
    /// Received but unfinished source records per partition above which the runtime
    /// pauses fetching that partition (default 10 000); resumed at half.
    pub max_buffered_per_partition: usize,
    /// Bytes of received records (payload, key, headers and bookkeeping) the
    /// runtime may hold (default 32 MiB). A fifth of it is shared out over the
    /// assigned partitions for their source records, another fifth for their retry
    /// records; a partition whose records reach its share pauses fetching that topic
    /// (its own only) and resumes at half. What was already fetched or on its way
    /// when a partition paused still arrives: librdkafka's read-ahead is sized from
    /// the bound for that (`queued.max.messages.kbytes` a fifth,
    /// `max.partition.fetch.bytes` a twentieth, at most 1 MiB, and one fetch at most
    /// the read-ahead: `message.max.bytes` lowered with it), and so are the
    /// batches to the loop, so that everything held stays under the bound (82 % to
    /// 88 % of it at the peak in `tests/memory.rs`, idle and loaded machine; records
    /// larger than a batch can add one each).
    /// A target that is down for hours thus costs this much memory, not its backlog.
    pub max_buffered_bytes: usize,
    /// On shutdown, how long in-flight handlers may finish (default 10 s).
    pub shutdown_grace: Duration,
    /// On a rebalance, how long in-flight handlers of revoked partitions may finish
    /// (default 5 s). Keep it well under the group's rebalance timeout.
    pub revoke_grace: Duration,
    /// Delivery timeout for records handed to the retry and DLQ topics (default 60 s).
    /// A delivery that still fails stops the runtime (see [`ConsumerError::Produce`]).
    pub produce_timeout: Duration,
    /// How often finished offsets are stored for the next auto-commit (default 100 ms).
    pub store_interval: Duration,
    /// `auto.commit.interval.ms`: how often stored offsets are committed (default 5 s).
    pub commit_interval: Duration,
    /// How often consumer lag is read from librdkafka's statistics for the metrics
    /// (`statistics.interval.ms`, default 15 s).
    pub lag_interval: Duration,
}

impl RuntimeConfig {
    /// The defaults for `group_id` consuming `source_topic`.
    pub fn new(group_id: impl Into<String>, source_topic: impl Into<String>) -> Self {
        let group_id = group_id.into();
        RuntimeConfig {
            retry_topic: format!("{group_id}.retry"),
            dlq_topic: format!("{group_id}.dlq"),
            group_id,
            source_topic: source_topic.into(),
            quick_retries: 3,
            quick_backoff: Duration::from_millis(100),
            retry_delays: [5, 30, 120, 600, 1800]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            max_concurrent_keys: 64,
            max_buffered_per_partition: 10_000,
            max_buffered_bytes: 32 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            revoke_grace: Duration::from_secs(5),
            produce_timeout: Duration::from_secs(60),
            store_interval: Duration::from_millis(100),
            commit_interval: Duration::from_secs(5),
            lag_interval: Duration::from_secs(15),
        }
    }

    /// Checks the values that would make the runtime misbehave.
    pub fn validate(&self) -> Result<(), ConsumerError> {
        let mut problems = Vec::new();
        if self.group_id.trim().is_empty() {
            problems.push("group_id is empty");
        }
        if self.source_topic.trim().is_empty() {
            problems.push("source_topic is empty");
        }
        if self.retry_topic == self.source_topic || self.dlq_topic == self.source_topic {
            problems.push("retry and DLQ topics must differ from the source topic");
        }
        if self.retry_topic == self.dlq_topic {
            problems.push("retry and DLQ topics must differ");
        }
        if self.max_concurrent_keys == 0 {
            problems.push("max_concurrent_keys must be at least 1");
        }
        if self.max_buffered_per_partition == 0 {
            problems.push("max_buffered_per_partition must be at least 1");
        }
        if self.max_buffered_bytes < 64 * 1024 {
            problems.push("max_buffered_bytes must be at least 64 KiB");
        }
        if self.store_interval.is_zero() || self.lag_interval.is_zero() {
            problems.push("store_interval and lag_interval must be positive");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConsumerError::Config(problems.join("; ")))
        }
    }

    /// The wait before quick retry number `n` (1-based): `quick_backoff * 2^(n-1)`.
    pub(crate) fn quick_delay(&self, n: u32) -> Duration {
        self.quick_backoff
            .saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
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
    /// `MAX_CONCURRENT_KEYS`, `MAX_BUFFERED_BYTES`, `SHUTDOWN_GRACE_MS`.
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
        config.max_buffered_bytes = env.parse_or("MAX_BUFFERED_BYTES", config.max_buffered_bytes);
        if let Some(ms) = env.get("SHUTDOWN_GRACE_MS").map(str::to_owned) {
            match ms.trim().parse::<u64>() {
                Ok(ms) => config.shutdown_grace = Duration::from_millis(ms),
                Err(e) => env.problem("SHUTDOWN_GRACE_MS", format!("milliseconds expected: {e}")),
            }
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_group() {
        let c = RuntimeConfig::new("notifier", "slack.messages.v1");
        assert_eq!(c.retry_topic, "notifier.retry");
        assert_eq!(c.dlq_topic, "notifier.dlq");
        assert_eq!(c.retry_delays.len(), 5);
        assert_eq!(c.quick_delay(1), Duration::from_millis(100));
        assert_eq!(c.quick_delay(3), Duration::from_millis(400));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = RuntimeConfig::new("", "t");
        c.max_concurrent_keys = 0;
        let text = c.validate().unwrap_err().to_string();
        assert!(text.contains("group_id"), "{text}");
        assert!(text.contains("max_concurrent_keys"), "{text}");
    }

    #[test]
    fn runtime_config_from_env() {
        let mut env = Env::from_pairs([
            ("RETRY_DELAYS_MS", "100, 2000"),
            ("QUICK_RETRIES", "1"),
            ("MAX_BUFFERED_BYTES", "1048576"),
            ("SHUTDOWN_GRACE_MS", "2500"),
        ]);
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
        assert_eq!(config.max_buffered_bytes, 1_048_576);
        assert_eq!(config.shutdown_grace, Duration::from_millis(2500));
    }

    #[test]
    fn bad_delays_are_named() {
        let mut env = Env::from_pairs([("RETRY_DELAYS_MS", "1s")]);
        let _ = RuntimeConfig::from_env(&mut env, "g", "t");
        let err = env.finish().unwrap_err().to_string();
        assert!(err.contains("RETRY_DELAYS_MS"), "{err}");
    }
}
