//! One way for a test to get Kafka: [`TestCluster::kafka`], the real Apache Kafka
//! broker that the whole test run shares (each test under topic and group names of
//! its own), or [`TestCluster::mock`], librdkafka's mock cluster, only for a test
//! that needs faults a real broker cannot give on cue (produce errors, per-request
//! latency), with the reason written at the call.
//!
//! The shared broker: `scripts/test` starts it (`slackline-test-kafka start`) and
//! passes `SLACKLINE_TEST_KAFKA_BOOTSTRAP`; without that variable the first test that
//! asks starts one itself (under a file lock, so parallel test processes agree) and
//! leaves it running for the next tests and runs; `slackline-test-kafka stop` ends
//! it. When `SLACKLINE_CLUSTER_REPORT_DIR` is set, each test binary writes there which
//! cluster it used, and `scripts/test` prints the table.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use slackline_kafka::embedded::{self, BrokerConfig, EmbeddedBroker};
use slackline_kafka::topics::{TopicNames, TopicSpec};
use slackline_kafka::KafkaSettings;

/// librdkafka's mock cluster, as the tests hold it.
pub type Mock = rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// Brokers in a mock cluster.
const MOCK_BROKERS: i32 = 3;

/// A Kafka cluster for one test, with topic and group names of its own.
pub struct TestCluster {
    bootstrap: String,
    names: TopicNames,
    mock: Option<Mock>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("bootstrap", &self.bootstrap)
            .field("prefix", &self.names.prefix())
            .field("mock", &self.mock.is_some())
            .finish()
    }
}

impl TestCluster {
    /// The shared Apache Kafka broker, with a topic prefix unique to this test.
    ///
    /// # Panics
    ///
    /// When no broker can be had (no jars: run `scripts/fetch-kafka`).
    pub fn kafka() -> TestCluster {
        crate::kafka::init_logs();
        let bootstrap = shared_broker().to_owned();
        report(&format!(
            "apache-kafka {} ({bootstrap})",
            embedded::kafka_version()
        ));
        TestCluster {
            bootstrap,
            names: TopicNames::with_prefix(format!("{}.", crate::unique_name("t"))),
            mock: None,
        }
    }

    /// The shared broker with every slackline topic created under this test's prefix
    /// (`partitions` per flow topic), through the code path of `slackline topics
    /// create`.
    pub fn kafka_with_topics(partitions: i32) -> TestCluster {
        let cluster = TestCluster::kafka();
        cluster.create_all_topics(partitions);
        cluster
    }

    /// librdkafka's mock cluster (three brokers). `reason` says which fault the test
    /// injects that a real broker cannot give on cue; it is recorded in the run's
    /// cluster report.
    ///
    /// # Panics
    ///
    /// When the mock cluster cannot start.
    pub fn mock(reason: &str) -> TestCluster {
        crate::kafka::init_logs();
        let mock = rdkafka::mocking::MockCluster::new(MOCK_BROKERS).expect("mock cluster");
        report(&format!("mock cluster: {reason}"));
        TestCluster {
            bootstrap: mock.bootstrap_servers(),
            names: TopicNames::with_prefix(format!("{}.", crate::unique_name("t"))),
            mock: Some(mock),
        }
    }

    /// The mock cluster with every slackline topic created.
    pub fn mock_with_topics(reason: &str, partitions: i32) -> TestCluster {
        let cluster = TestCluster::mock(reason);
        cluster.create_all_topics(partitions);
        cluster
    }

    /// `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.bootstrap.clone()
    }

    /// Kafka settings for a service under test.
    pub fn settings(&self) -> KafkaSettings {
        KafkaSettings::new(&self.bootstrap)
    }

    /// This test's topic and group names.
    pub fn names(&self) -> &TopicNames {
        &self.names
    }

    /// `base` under this test's prefix (a topic or a group id).
    pub fn topic(&self, base: &str) -> String {
        self.names.name(base)
    }

    /// The mock cluster, for fault injection.
    ///
    /// # Panics
    ///
    /// On the real broker: a test that injects faults asks for [`TestCluster::mock`].
    pub fn faults(&self) -> &Mock {
        self.mock
            .as_ref()
            .expect("fault injection needs TestCluster::mock")
    }

    /// Whether this is the mock cluster.
    pub fn is_mock(&self) -> bool {
        self.mock.is_some()
    }

    /// Creates a topic (the name as given, not prefixed) with `partitions`
    /// partitions. Panics on failure: this is test code.
    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.create_specs(vec![TopicSpec {
            name: name.to_owned(),
            partitions,
            configs: Vec::new(),
        }]);
    }

    /// Deletes a topic of the real broker and returns once its metadata no longer
    /// lists it. Panics on failure (and on the mock): this is test code.
    pub fn delete_topic(&self, name: &str) {
        assert!(self.mock.is_none(), "delete_topic is for the real broker");
        let bootstrap = self.bootstrap_servers();
        let name = name.to_owned();
        std::thread::spawn(move || {
            use rdkafka::admin::{AdminClient, AdminOptions};
            use rdkafka::client::DefaultClientContext;
            use rdkafka::config::ClientConfig;
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
                .expect("an admin client");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for topic deletion");
            let results = runtime
                .block_on(admin.delete_topics(&[&name], &AdminOptions::new()))
                .expect("delete topics");
            for result in results {
                result.unwrap_or_else(|(t, e)| panic!("deleting {t}: {e}"));
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let listed = admin
                    .inner()
                    .fetch_metadata(Some(&name), Duration::from_secs(5))
                    .map(|m| {
                        m.topics()
                            .iter()
                            .any(|t| t.name() == name && t.error().is_none())
                    })
                    .unwrap_or(true);
                if !listed {
                    return;
                }
                assert!(Instant::now() < deadline, "{name} still listed after 30 s");
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .join()
        .expect("topic deletion thread");
    }

    /// Creates every slackline topic under this test's prefix.
    pub fn create_all_topics(&self, partitions: i32) {
        self.create_specs(self.names.specs(partitions));
    }

    fn create_specs(&self, specs: Vec<TopicSpec>) {
        if let Some(mock) = &self.mock {
            // The mock has no CreateTopics; it makes topics through its own API.
            for spec in specs {
                mock.create_topic(&spec.name, spec.partitions, MOCK_BROKERS)
                    .expect("create a mock topic");
            }
            return;
        }
        let settings = self.settings();
        // Its own thread and runtime: callable from sync code and from any async test.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for topic creation");
            runtime
                .block_on(slackline_kafka::topics::create(&settings, &specs, 1))
                .expect("create topics on the test broker");
        })
        .join()
        .expect("topic creation thread");
    }
}

/// The bootstrap servers of the run's shared broker.
fn shared_broker() -> &'static str {
    static BOOTSTRAP: OnceLock<String> = OnceLock::new();
    BOOTSTRAP.get_or_init(|| {
        if let Some(b) = std::env::var("SLACKLINE_TEST_KAFKA_BOOTSTRAP")
            .ok()
            .filter(|b| !b.is_empty())
        {
            return b;
        }
        ensure_shared_broker().unwrap_or_else(|e| panic!("no Kafka broker for the tests: {e}"))
    })
}

/// The shared broker's folder: `SLACKLINE_TEST_KAFKA_DIR`, else `target/test-kafka`
/// of the workspace.
pub fn shared_broker_dir() -> PathBuf {
    std::env::var_os("SLACKLINE_TEST_KAFKA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-kafka")
        })
}

/// Returns the shared broker's bootstrap servers, starting it when none runs. Runs
/// under an exclusive lock on `<dir>/lock`, so that concurrent test processes start
/// one broker between them.
pub fn ensure_shared_broker() -> Result<String, String> {
    let dir = shared_broker_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(|e| format!("opening the broker lock: {e}"))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| format!("locking the broker lock: {e}"))?;
    let broker_dir = dir.join("broker");
    if let Some((pid, bootstrap)) = recorded_broker() {
        if embedded::is_broker_of(pid, &broker_dir) {
            // Ours and alive: on loaded cores a metadata answer can take a while;
            // wait rather than start a second broker over its log directory.
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if embedded::answers_metadata(&bootstrap) {
                    return Ok(bootstrap);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            return Err(format!(
                "the shared broker (pid {pid}, {bootstrap}) runs but does not answer; \
                 stop it with slackline-test-kafka stop"
            ));
        }
    }
    // A fresh log directory each start: old test topics are of no use.
    let _ = std::fs::remove_dir_all(&broker_dir);
    // Its own process group: it outlives the test process that started it.
    let broker = EmbeddedBroker::start(BrokerConfig {
        own_process_group: true,
        ..BrokerConfig::new(&broker_dir)
    })
    .map_err(|e| e.to_string())?;
    let bootstrap = broker.bootstrap_servers().to_owned();
    let pid = broker.detach().ok_or("the broker has no process")?;
    std::fs::write(dir.join("state"), format!("{pid} {bootstrap}\n"))
        .map_err(|e| format!("writing the broker state: {e}"))?;
    Ok(bootstrap)
}

/// The pid and bootstrap servers in the shared broker's state file.
fn recorded_broker() -> Option<(u32, String)> {
    let state = std::fs::read_to_string(shared_broker_dir().join("state")).ok()?;
    let (pid, bootstrap) = state.trim().split_once(' ')?;
    Some((pid.parse().ok()?, bootstrap.to_owned()))
}

/// The shared broker's pid and bootstrap servers when it runs and answers.
pub fn running_shared_broker() -> Option<(u32, String)> {
    let (pid, bootstrap) = recorded_broker()?;
    (embedded::is_broker_of(pid, &shared_broker_dir().join("broker"))
        && embedded::answers_metadata(&bootstrap))
    .then_some((pid, bootstrap))
}

/// Stops the shared broker: SIGTERM, then SIGKILL after 30 s. Only a process that
/// really is that broker is signalled (never a recycled pid). Returns whether one ran.
pub fn stop_shared_broker() -> bool {
    let dir = shared_broker_dir();
    let Ok(lock) = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
    else {
        return false;
    };
    if rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).is_err() {
        return false;
    }
    let Some((pid, _)) = recorded_broker() else {
        return false;
    };
    let _ = std::fs::remove_file(dir.join("state"));
    let broker_dir = dir.join("broker");
    if !embedded::is_broker_of(pid, &broker_dir) {
        return false;
    }
    embedded::terminate(pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    while embedded::is_broker_of(pid, &broker_dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if embedded::is_broker_of(pid, &broker_dir) {
        embedded::kill_pid(pid);
    }
    true
}

/// Records in the run's cluster report that this test binary runs a private Apache
/// Kafka broker of its own at `bootstrap` (a test that kills and restarts its broker,
/// which it must never do to the shared one).
pub fn report_private_broker(bootstrap: &str) {
    report(&format!(
        "apache-kafka {} (private broker {bootstrap})",
        embedded::kafka_version()
    ));
}

/// Writes `<report dir>/<test binary>` = `what`, once per binary and kind, when
/// `SLACKLINE_CLUSTER_REPORT_DIR` is set.
fn report(what: &str) {
    let Some(dir) = std::env::var_os("SLACKLINE_CLUSTER_REPORT_DIR") else {
        return;
    };
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown".into());
    // Test binaries are named `<name>-<16 hex digits>`.
    let binary = match binary.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name.to_owned()
        }
        _ => binary,
    };
    let kind = if what.starts_with("mock") {
        "mock"
    } else {
        "kafka"
    };
    // Once per process and line; the script prints the distinct lines.
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    {
        let mut seen = SEEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.iter().any(|l| l == what) {
            return;
        }
        seen.push(what.to_owned());
    }
    let dir = PathBuf::from(dir);
    let _ = std::fs::create_dir_all(&dir);
    // One file per binary and kind. One write of one short line in append mode, so
    // lines from parallel test processes never interleave.
    let path = dir.join(format!("{binary}.{kind}"));
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&path) {
        let _ = f.write_all(format!("{what}\n").as_bytes());
    }
}
