//! A single-node Apache Kafka broker (KRaft, `broker,controller` roles) on loopback,
//! run from the jars that `scripts/fetch-kafka` put in a cache folder: the Kafka of
//! the tests, the benchmarks and `slackline dev --kafka=embedded`.
//!
//! The version is the one pinned in `scripts/kafka-broker/pom.xml` (read from that
//! file at compile time). [`EmbeddedBroker::start`] writes a `server.properties` into
//! its folder, formats the log directory once (`kafka.tools.StorageTool format`),
//! starts `kafka.Kafka` with its output in `broker.log`, and returns once the broker
//! answers a metadata request. [`EmbeddedBroker::kill`] and
//! [`EmbeddedBroker::restart`] give a real broker loss: SIGKILL, then a start on the
//! same log directory and ports.
//!
//! This is a local broker for one machine, never a production deployment: it runs
//! with replication factor 1 and the settings in [`LOCAL_BROKER_PROPERTIES`].

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// The pom whose `<kafka.version>` pins the broker.
const POM: &str = include_str!("../../../scripts/kafka-broker/pom.xml");

/// Broker settings for a single local node. They suit tests and a laptop, and stay
/// out of the product's defaults: one replica of everything, no initial rebalance
/// delay (a group's first member starts at once), short session timeouts allowed,
/// small log segments, no topic created behind the application's back.
pub const LOCAL_BROKER_PROPERTIES: &[(&str, &str)] = &[
    ("num.partitions", "1"),
    ("default.replication.factor", "1"),
    ("min.insync.replicas", "1"),
    ("offsets.topic.replication.factor", "1"),
    ("offsets.topic.num.partitions", "8"),
    ("transaction.state.log.replication.factor", "1"),
    ("transaction.state.log.min.isr", "1"),
    ("transaction.state.log.num.partitions", "4"),
    ("share.coordinator.state.topic.replication.factor", "1"),
    ("share.coordinator.state.topic.min.isr", "1"),
    ("group.initial.rebalance.delay.ms", "0"),
    ("group.min.session.timeout.ms", "1000"),
    ("group.consumer.min.session.timeout.ms", "1000"),
    ("group.consumer.min.heartbeat.interval.ms", "250"),
    ("group.consumer.heartbeat.interval.ms", "500"),
    ("group.consumer.session.timeout.ms", "10000"),
    ("auto.create.topics.enable", "false"),
    ("log.segment.bytes", "1048576"),
    ("log.retention.check.interval.ms", "60000"),
    ("num.network.threads", "2"),
    ("num.io.threads", "4"),
];

/// How long [`EmbeddedBroker::start`] waits for the broker to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a clean stop may take before the broker is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of `broker.log` goes into an error.
const LOG_TAIL_BYTES: u64 = 4000;

/// What can go wrong running the embedded broker.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The broker's jars are not in the cache folder.
    #[error(
        "Apache Kafka {version} jars not found in {dir}; run scripts/fetch-kafka (needs \
         Maven), or set SLACKLINE_KAFKA_LIBS to a folder holding them"
    )]
    JarsMissing {
        /// The version looked for.
        version: String,
        /// The folder looked in.
        dir: String,
    },
    /// A file, folder, socket or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Formatting the log directory failed.
    #[error("formatting the KRaft log directory failed ({status}):\n{output}")]
    Format {
        /// The storage tool's exit status.
        status: String,
        /// What it printed.
        output: String,
    },
    /// The broker process ended while it should run.
    #[error("the Kafka broker exited ({status}); broker.log ends:\n{log_tail}")]
    Exited {
        /// Its exit status.
        status: String,
        /// The end of its log.
        log_tail: String,
    },
    /// The broker did not answer in time.
    #[error(
        "the Kafka broker did not answer metadata within {waited:?}; broker.log ends:\n{log_tail}"
    )]
    Timeout {
        /// How long it was given.
        waited: Duration,
        /// The end of its log.
        log_tail: String,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    let context = context.into();
    move |source| EmbeddedError::Io { context, source }
}

/// The Apache Kafka version pinned in `scripts/kafka-broker/pom.xml`.
pub fn kafka_version() -> &'static str {
    let open = "<kafka.version>";
    POM.split_once(open)
        .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
        .map(|(version, _)| version.trim())
        .unwrap_or("unknown")
}

/// The cache folder `scripts/fetch-kafka` fills: `$SLACKLINE_KAFKA_LIBS`, else
/// `$XDG_CACHE_HOME/slackline/kafka-<version>/libs` (`~/.cache` without it).
pub fn libs_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLACKLINE_KAFKA_LIBS") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache
        .join("slackline")
        .join(format!("kafka-{}", kafka_version()))
        .join("libs")
}

/// Whether the broker's jars are in [`libs_dir`].
pub fn jars_present() -> bool {
    libs_dir()
        .join(format!("kafka_2.13-{}.jar", kafka_version()))
        .is_file()
}

/// Where and how to run a broker.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The broker's folder: `server.properties`, `broker.log` and the log directory
    /// `data/` go here. Created when missing.
    pub dir: PathBuf,
    /// The client (PLAINTEXT) port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// The controller port on 127.0.0.1; 0 picks a free one.
    pub controller_port: u16,
    /// Broker properties on top of [`LOCAL_BROKER_PROPERTIES`] (later ones win).
    pub properties: Vec<(String, String)>,
    /// The JVM's maximum heap in MiB.
    pub heap_mb: u32,
    /// Run the broker in a process group of its own, so that a Ctrl-C or a signal to
    /// the caller's group does not reach it (for `dev`, which stops it last, and for
    /// the tests' shared broker, which outlives the test that started it). Off by
    /// default: a test's private broker then dies with the test's process group when
    /// a test runner kills it.
    pub own_process_group: bool,
}

impl BrokerConfig {
    /// A broker in `dir` on free ports with the local settings.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        BrokerConfig {
            dir: dir.into(),
            port: 0,
            controller_port: 0,
            properties: Vec::new(),
            heap_mb: 768,
            own_process_group: false,
        }
    }
}

/// A running single-node broker. Dropping it kills the process (use
/// [`EmbeddedBroker::stop`] for a clean shutdown, [`EmbeddedBroker::detach`] to leave
/// it running).
#[derive(Debug)]
pub struct EmbeddedBroker {
    config: BrokerConfig,
    child: Option<Child>,
    bootstrap: String,
}

impl EmbeddedBroker {
    /// Formats the log directory if it is new, starts the broker and waits until it
    /// answers a metadata request.
    pub fn start(mut config: BrokerConfig) -> Result<EmbeddedBroker, EmbeddedError> {
        let libs = libs_dir();
        if !jars_present() {
            return Err(EmbeddedError::JarsMissing {
                version: kafka_version().to_owned(),
                dir: libs.display().to_string(),
            });
        }
        std::fs::create_dir_all(config.dir.join("data"))
            .map_err(io(format!("creating {}", config.dir.display())))?;
        config.dir = config
            .dir
            .canonicalize()
            .map_err(io(format!("resolving {}", config.dir.display())))?;
        if config.port == 0 {
            config.port = free_port()?;
        }
        if config.controller_port == 0 {
            config.controller_port = free_port()?;
        }
        let mut broker = EmbeddedBroker {
            bootstrap: format!("127.0.0.1:{}", config.port),
            config,
            child: None,
        };
        broker.write_files()?;
        if !broker
            .config
            .dir
            .join("data")
            .join("meta.properties")
            .is_file()
        {
            broker.format()?;
        }
        broker.spawn()?;
        Ok(broker)
    }

    /// `127.0.0.1:<port>`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The broker's folder.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// The broker process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the broker with SIGKILL (a crash: nothing is flushed or handed over) and
    /// waits for the process to be gone.
    pub fn kill(&mut self) -> Result<(), EmbeddedError> {
        if let Some(mut child) = self.child.take() {
            child.kill().map_err(io("killing the broker"))?;
            child.wait().map_err(io("waiting for the killed broker"))?;
        }
        Ok(())
    }

    /// Starts the broker again on the same log directory and ports (after
    /// [`EmbeddedBroker::kill`] or [`EmbeddedBroker::stop`]).
    pub fn restart(&mut self) -> Result<(), EmbeddedError> {
        self.kill()?;
        self.spawn()
    }

    /// Stops the broker cleanly (SIGTERM, then SIGKILL after 30 s).
    pub fn stop(&mut self) -> Result<(), EmbeddedError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        terminate(child.id());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait().map_err(io("waiting for the broker"))? {
                Some(_) => return Ok(()),
                None if Instant::now() >= deadline => {
                    child.kill().map_err(io("killing the broker"))?;
                    child.wait().map_err(io("waiting for the killed broker"))?;
                    return Ok(());
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Leaves the broker running after this value is gone and returns its process
    /// id (a broker shared by several test processes).
    pub fn detach(mut self) -> Option<u32> {
        self.child.take().map(|c| c.id())
    }

    fn properties(&self) -> String {
        let c = &self.config;
        let data = c.dir.join("data");
        let mut lines = vec![
            "process.roles=broker,controller".to_owned(),
            "node.id=1".to_owned(),
            format!("controller.quorum.voters=1@127.0.0.1:{}", c.controller_port),
            format!(
                "listeners=PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                c.port, c.controller_port
            ),
            format!("advertised.listeners=PLAINTEXT://127.0.0.1:{}", c.port),
            "controller.listener.names=CONTROLLER".to_owned(),
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".to_owned(),
            "inter.broker.listener.name=PLAINTEXT".to_owned(),
            format!("log.dirs={}", data.display()),
        ];
        lines.extend(
            LOCAL_BROKER_PROPERTIES
                .iter()
                .map(|(k, v)| format!("{k}={v}")),
        );
        lines.extend(c.properties.iter().map(|(k, v)| format!("{k}={v}")));
        lines.push(String::new());
        lines.join("\n")
    }

    fn write_files(&self) -> Result<(), EmbeddedError> {
        let dir = &self.config.dir;
        std::fs::write(dir.join("server.properties"), self.properties())
            .map_err(io("writing server.properties"))?;
        std::fs::write(
            dir.join("log4j2.properties"),
            "rootLogger.level=WARN\n\
             rootLogger.appenderRef.out.ref=OUT\n\
             appender.out.type=Console\n\
             appender.out.name=OUT\n\
             appender.out.layout.type=PatternLayout\n\
             appender.out.layout.pattern=[%d] %p %m (%c)%n\n\
             logger.started.name=kafka.server.KafkaRaftServer\n\
             logger.started.level=INFO\n",
        )
        .map_err(io("writing log4j2.properties"))
    }

    fn java(&self) -> Command {
        let java = std::env::var_os("JAVA_HOME")
            .map(|home| PathBuf::from(home).join("bin").join("java"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("java"));
        let mut cmd = Command::new(java);
        cmd.arg(format!("-Xmx{}m", self.config.heap_mb))
            .arg("-Xms128m")
            .arg("-XX:+UseG1GC")
            .arg("-XX:MaxGCPauseMillis=20")
            .arg("-XX:+ExitOnOutOfMemoryError")
            .arg("-Djava.awt.headless=true")
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.config.dir.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", libs_dir().display()))
            .current_dir(&self.config.dir)
            .stdin(Stdio::null());
        cmd
    }

    fn format(&self) -> Result<(), EmbeddedError> {
        let output = self
            .java()
            .args(["kafka.tools.StorageTool", "format", "--ignore-formatted"])
            .arg("--cluster-id")
            .arg(cluster_id())
            .arg("--config")
            .arg(self.config.dir.join("server.properties"))
            .output()
            .map_err(io("running java (is a JDK installed?)"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(EmbeddedError::Format {
                status: output.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            })
        }
    }

    fn spawn(&mut self) -> Result<(), EmbeddedError> {
        let log_path = self.config.dir.join("broker.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("opening {}", log_path.display())))?;
        let log_err = log.try_clone().map_err(io("cloning the log handle"))?;
        let mut cmd = self.java();
        cmd.arg("kafka.Kafka")
            .arg(self.config.dir.join("server.properties"))
            .stdout(log)
            .stderr(log_err);
        if self.config.own_process_group {
            // A Ctrl-C meant for `dev` or a test run reaches the broker only through
            // stop().
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        let child = cmd
            .spawn()
            .map_err(io("starting java (is a JDK installed?)"))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn log_tail(&self) -> String {
        log_tail(&self.config.dir.join("broker.log"))
    }

    fn exited(&mut self) -> Result<Option<ExitStatus>, EmbeddedError> {
        match self.child.as_mut() {
            Some(child) => child.try_wait().map_err(io("checking the broker process")),
            None => Ok(None),
        }
    }

    fn wait_ready(&mut self) -> Result<(), EmbeddedError> {
        let start = Instant::now();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.config.port);
        loop {
            if let Some(status) = self.exited()? {
                self.child = None;
                return Err(EmbeddedError::Exited {
                    status: status.to_string(),
                    log_tail: self.log_tail(),
                });
            }
            if start.elapsed() > READY_TIMEOUT {
                let _ = self.kill();
                return Err(EmbeddedError::Timeout {
                    waited: READY_TIMEOUT,
                    log_tail: self.log_tail(),
                });
            }
            if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok()
                && answers_metadata(&self.bootstrap)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Whether a broker at `bootstrap` answers a metadata request listing a broker.
pub fn answers_metadata(bootstrap: &str) -> bool {
    let consumer: Result<BaseConsumer, _> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create();
    consumer
        .ok()
        .and_then(|c| c.fetch_metadata(None, Duration::from_secs(2)).ok())
        .is_some_and(|m| !m.brokers().is_empty())
}

/// Sends SIGTERM to `pid` (a clean stop of a broker started elsewhere, such as the
/// tests' shared one). Errors (no such process) are ignored.
pub fn terminate(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// Sends SIGKILL to `pid`. Errors (no such process) are ignored.
pub fn kill_pid(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Whether process `pid` is a broker started from `dir`'s `server.properties` (so a
/// recorded pid that the system has since given to another process is never
/// signalled). Reads `/proc/<pid>/cmdline`.
pub fn is_broker_of(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let properties = dir.join("server.properties");
    let dir_canon = properties.canonicalize().unwrap_or(properties);
    let want = dir_canon.to_string_lossy();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| String::from_utf8_lossy(arg) == want)
        && cmdline.split(|b| *b == 0).any(|arg| arg == b"kafka.Kafka")
}

/// Whether a process `pid` exists.
pub fn process_alive(pid: u32) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}

fn free_port() -> Result<u16, EmbeddedError> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .map_err(io("binding 127.0.0.1:0 for a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("reading a bound port"))?
        .port())
}

/// A KRaft cluster id: 16 random bytes, URL-safe base64 without padding.
fn cluster_id() -> String {
    // A leading '-' would read as an option to the storage tool (Kafka's own
    // `Uuid.randomUuid` never starts with one either).
    loop {
        let id = random_cluster_id();
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn random_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 16];
    let mut seed = std::collections::hash_map::RandomState::new();
    for chunk in bytes.chunks_mut(8) {
        use std::hash::{BuildHasher, Hasher};
        let mut h = seed.build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes());
        seed = std::collections::hash_map::RandomState::new();
    }
    let mut out = String::with_capacity(22);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(char::from(ALPHABET[((acc >> bits) & 63) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (6 - bits)) & 63) as usize]));
    }
    out
}

/// The last few KB of a log file (empty when it cannot be read).
fn log_tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comes_from_the_pom() {
        let v = kafka_version();
        assert!(v.starts_with("4."), "{v}");
        assert!(
            libs_dir().to_string_lossy().contains(v)
                || std::env::var_os("SLACKLINE_KAFKA_LIBS").is_some()
        );
    }

    #[test]
    fn cluster_ids_are_22_url_safe_characters() {
        let a = cluster_id();
        assert_eq!(a.len(), 22, "{a}");
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(a, cluster_id());
    }

    #[test]
    fn cluster_ids_never_start_with_a_dash() {
        // One in 64 random ids would: the storage tool then reads it as an option.
        assert!((0..2000).all(|_| !cluster_id().starts_with('-')));
    }

    #[test]
    fn properties_name_loopback_listeners_and_local_settings() {
        let broker = EmbeddedBroker {
            config: BrokerConfig {
                port: 1234,
                controller_port: 1235,
                properties: vec![("log.segment.bytes".into(), "2097152".into())],
                ..BrokerConfig::new("/tmp/x")
            },
            child: None,
            bootstrap: String::new(),
        };
        let p = broker.properties();
        assert!(p.contains("listeners=PLAINTEXT://127.0.0.1:1234,CONTROLLER://127.0.0.1:1235"));
        assert!(p.contains("group.initial.rebalance.delay.ms=0"));
        // Extra properties come last, so they win.
        let last = p.lines().rfind(|l| l.starts_with("log.segment.bytes="));
        assert_eq!(last, Some("log.segment.bytes=2097152"));
    }
}
