//! A throwaway single-node Garage server for tests.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{find_on_path, free_port, random_hex, unique_name, TestkitError};

/// The S3 region every test instance serves.
const REGION: &str = "garage";
/// How long [`Garage::start`] and [`Garage::restart`] wait for the server to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Garage::stop`] waits for the S3 port to close after the kill.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one `garage` CLI command may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(15);
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(100);
/// How many times [`Garage::start`] picks new ports when one turned out to be taken.
const START_ATTEMPTS: usize = 3;
/// How much of the server log goes into error messages.
const LOG_TAIL_BYTES: u64 = 4000;

/// A throwaway Garage S3 server on loopback, one per test; killed and its data removed
/// on drop.
///
/// [`Garage::start`] writes a config into a fresh temporary directory and runs
/// `garage server --single-node --default-bucket` on free loopback ports, which applies
/// a single-node layout and creates a generated access key and one bucket (with a
/// unique name) that the key may read, write and own. Point an S3 client at it with path-style addressing:
/// `endpoint_url(&g.endpoint)`, `region(g.region)`, `force_path_style(true)` and static
/// credentials `g.access_key_id` / `g.secret_access_key`.
///
/// The server's stdout and stderr go to `garage.log` in [`Garage::dir`]; errors quote
/// its tail.
#[derive(Debug)]
pub struct Garage {
    /// The S3 endpoint, `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The S3 region the server expects in signatures (`"garage"`).
    pub region: String,
    /// The access key id (`GK` followed by 24 hex characters).
    pub access_key_id: String,
    /// The secret access key (64 hex characters).
    pub secret_access_key: String,
    /// The bucket created for this instance; the key can read, write and own it.
    pub bucket: String,
    bin: PathBuf,
    child: Option<Child>,
    config_path: PathBuf,
    log_path: PathBuf,
    s3_port: u16,
    admin_port: u16,
    // Declared last so that it is removed after the server is gone.
    dir: TempDir,
}

impl Garage {
    /// Starts a fresh server and returns once it serves S3 requests for [`Garage::bucket`].
    ///
    /// Fails with [`TestkitError::GarageNotFound`] when there is no `garage` binary,
    /// and with [`TestkitError::Timeout`] (quoting the server log) when the server is
    /// not ready within 30 seconds.
    pub fn start() -> Result<Garage, TestkitError> {
        let bin = garage_bin()?;
        let mut attempt = 1;
        loop {
            match Self::start_once(&bin) {
                Ok(garage) => return Ok(garage),
                Err(err) if attempt < START_ATTEMPTS && is_port_conflict(&err) => attempt += 1,
                Err(err) => return Err(err),
            }
        }
    }

    /// Kills the server process (its data stays), waits for it to exit and for the S3
    /// port to refuse connections. Stopping a stopped server does nothing.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Err(err) = child.kill() {
            // InvalidInput means it had already exited; wait() below reaps it.
            if err.kind() != std::io::ErrorKind::InvalidInput {
                return Err(TestkitError::io("kill garage server", err));
            }
        }
        child
            .wait()
            .map_err(|err| TestkitError::io("wait for garage server to exit", err))?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while port_open(self.s3_port) {
            if Instant::now() >= deadline {
                return Err(self.timeout("the S3 port to close after stop", STOP_TIMEOUT));
            }
            sleep(POLL);
        }
        Ok(())
    }

    /// Starts the server again on the same ports and data (stopping it first if it
    /// runs) and waits until it serves S3 requests again.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        self.spawn_server()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        self.wait_ready(deadline)
    }

    /// The archive URL for `prefix` in this instance's bucket: `s3://<bucket>/<prefix>`.
    pub fn archive_url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix.trim_start_matches('/'))
    }

    /// Garage's Prometheus metrics (`api_s3_request_counter{api_endpoint="PutObject"}`
    /// counts PUTs), on its admin port.
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.admin_port)
    }

    /// The temporary directory holding this instance's config, data and `garage.log`;
    /// it is removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The path of the server's stdout/stderr log, for diagnosing a failing test.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn start_once(bin: &Path) -> Result<Garage, TestkitError> {
        let started = Instant::now();
        let deadline = started + READY_TIMEOUT;
        let dir = tempfile::Builder::new()
            .prefix("slackline-garage-")
            .tempdir()
            .map_err(|err| TestkitError::io("create garage temp dir", err))?;
        let [s3_port, rpc_port, admin_port] = distinct_free_ports();
        let config_path = dir.path().join("garage.toml");
        let config = render_config(dir.path(), s3_port, rpc_port, admin_port);
        std::fs::write(&config_path, config)
            .map_err(|err| TestkitError::io("write garage config", err))?;

        let mut garage = Garage {
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            region: REGION.to_owned(),
            access_key_id: format!("GK{}", random_hex(24)),
            secret_access_key: random_hex(64),
            bucket: unique_name("slackline-test"),
            bin: bin.to_owned(),
            child: None,
            log_path: dir.path().join("garage.log"),
            config_path,
            s3_port,
            admin_port,
            dir,
        };
        garage.spawn_server()?;
        garage.wait_ready(deadline)?;

        // `--single-node --default-bucket` creates the key and bucket before the API
        // servers listen; confirm it did, with the permissions tests rely on.
        let bucket = garage.bucket.clone();
        let info = garage.cli_until_ok(&["bucket", "info", &bucket], deadline)?;
        let key_line = info.lines().find(|l| l.contains(&garage.access_key_id));
        if key_line.is_none_or(|l| l.split_whitespace().next() != Some("RWO")) {
            return Err(TestkitError::UnexpectedOutput {
                command: format!("garage bucket info {bucket}"),
                output: format!(
                    "expected key {} with RWO permissions:\n{info}",
                    garage.access_key_id
                ),
            });
        }
        Ok(garage)
    }

    fn spawn_server(&mut self) -> Result<(), TestkitError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|err| TestkitError::io("open garage log", err))?;
        let log_err = log
            .try_clone()
            .map_err(|err| TestkitError::io("clone garage log handle", err))?;
        let mut cmd = self.command();
        // Single-node mode applies the layout itself; the default key and bucket are
        // created on first start and left alone on restarts.
        cmd.args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key_id)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret_access_key)
            .env("GARAGE_DEFAULT_BUCKET", &self.bucket)
            .env("RUST_LOG", "garage=info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = cmd
            .spawn()
            .map_err(|err| TestkitError::io(format!("spawn {}", self.bin.display()), err))?;
        self.child = Some(child);
        Ok(())
    }

    /// `garage -c <config>` with any `GARAGE_*` variables from the caller's environment
    /// removed, so that they cannot point the CLI at another cluster.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("GARAGE_") {
                cmd.env_remove(name);
            }
        }
        cmd.arg("-c").arg(&self.config_path).env("NO_COLOR", "1");
        cmd
    }

    /// Waits until the node reports itself healthy and the S3 port answers HTTP.
    fn wait_ready(&mut self, deadline: Instant) -> Result<(), TestkitError> {
        loop {
            self.check_running()?;
            if http_status(self.admin_port, "/health") == Some(200)
                && http_status(self.s3_port, "/").is_some()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.timeout("garage to become healthy and serve S3", READY_TIMEOUT));
            }
            sleep(POLL);
        }
    }

    /// Runs a CLI command until it succeeds (the server may still be starting).
    fn cli_until_ok(&mut self, args: &[&str], deadline: Instant) -> Result<String, TestkitError> {
        loop {
            self.check_running()?;
            match self.cli(args, deadline) {
                Ok(out) => return Ok(out),
                Err(err) if Instant::now() >= deadline => {
                    return Err(TestkitError::Timeout {
                        what: format!("`garage {}` to succeed (last error: {err})", args.join(" ")),
                        waited: READY_TIMEOUT,
                        log_tail: self.log_tail(),
                    })
                }
                Err(_) => sleep(POLL),
            }
        }
    }

    /// Runs one CLI command against this instance and returns its stdout.
    fn cli(&self, args: &[&str], deadline: Instant) -> Result<String, TestkitError> {
        let command = format!("garage {}", args.join(" "));
        let out_path = self.dir.path().join("cli.out");
        let out = File::create(&out_path)
            .map_err(|err| TestkitError::io("create garage CLI output file", err))?;
        let err_out = out
            .try_clone()
            .map_err(|err| TestkitError::io("clone garage CLI output handle", err))?;
        let mut child = self
            .command()
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err_out)
            .spawn()
            .map_err(|err| TestkitError::io(format!("spawn `{command}`"), err))?;
        let cli_deadline = deadline
            .min(Instant::now() + CLI_TIMEOUT)
            .max(Instant::now() + POLL);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= cli_deadline => {
                    // Best effort: the command is abandoned either way.
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => sleep(Duration::from_millis(20)),
                Err(err) => return Err(TestkitError::io(format!("wait for `{command}`"), err)),
            }
        };
        let output = std::fs::read_to_string(&out_path)
            .map_err(|err| TestkitError::io("read garage CLI output", err))?;
        match status {
            Some(status) if status.success() => Ok(output),
            Some(status) => Err(TestkitError::Command {
                command,
                status: status.to_string(),
                output,
            }),
            None => Err(TestkitError::Command {
                command,
                status: "timed out".to_owned(),
                output,
            }),
        }
    }

    /// Fails with [`TestkitError::ServerExited`] when the server process has ended.
    fn check_running(&mut self) -> Result<(), TestkitError> {
        let exited: Option<ExitStatus> = match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .map_err(|err| TestkitError::io("check garage server process", err))?,
            None => {
                return Err(TestkitError::ServerExited {
                    status: "not running".to_owned(),
                    log_tail: self.log_tail(),
                })
            }
        };
        match exited {
            Some(status) => {
                self.child = None;
                Err(TestkitError::ServerExited {
                    status: status.to_string(),
                    log_tail: self.log_tail(),
                })
            }
            None => Ok(()),
        }
    }

    fn timeout(&self, what: &str, waited: Duration) -> TestkitError {
        TestkitError::Timeout {
            what: what.to_owned(),
            waited,
            log_tail: self.log_tail(),
        }
    }

    /// The last few kilobytes of the server log (or why it could not be read).
    fn log_tail(&self) -> String {
        let read = || -> std::io::Result<String> {
            let mut file = File::open(&self.log_path)?;
            let len = file.metadata()?.len();
            file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        match read() {
            Ok(tail) if tail.trim().is_empty() => "(garage log is empty)".to_owned(),
            Ok(tail) => tail,
            Err(err) => format!("(cannot read {}: {err})", self.log_path.display()),
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Best effort: nothing useful can be done with an error during drop.
            let _ = child.kill();
            let _ = child.wait();
        }
        // `dir` (config, data, log) is removed when the TempDir field drops.
    }
}

/// Locates the garage binary: `$GARAGE_BIN`, else `garage` on `PATH`, else
/// `~/.cargo/bin/garage` (or `$CARGO_HOME/bin/garage`).
///
/// The error says to run `./scripts/test`, which installs it with
/// `cargo install garage --locked`.
pub fn garage_bin() -> Result<PathBuf, TestkitError> {
    if let Some(bin) = std::env::var_os("GARAGE_BIN").filter(|v| !v.is_empty()) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(TestkitError::GarageNotFound {
                searched: format!("GARAGE_BIN={} is not a file", bin.display()),
            })
        };
    }
    if let Some(bin) = find_on_path("garage") {
        return Ok(bin);
    }
    let mut searched = "GARAGE_BIN unset, not on PATH".to_owned();
    let cargo_homes = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    for cargo_home in cargo_homes {
        let bin = cargo_home.join("bin").join("garage");
        if bin.is_file() {
            return Ok(bin);
        }
        let _ = write!(searched, ", not in {}", bin.display());
    }
    Err(TestkitError::GarageNotFound { searched })
}

/// The Garage config for one instance: sqlite metadata, replication factor 1, every
/// listener on loopback.
fn render_config(dir: &Path, s3_port: u16, rpc_port: u16, admin_port: u16) -> String {
    let meta = dir.join("meta");
    let data = dir.join("data");
    let rpc_secret = random_hex(64);
    format!(
        r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1

rpc_secret = "{rpc_secret}"
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
bootstrap_peers = []

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
"#,
        meta = toml_path(&meta),
        data = toml_path(&data),
    )
}

/// A path as the inside of a TOML basic string.
fn toml_path(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

/// Three different free ports (S3, RPC, admin).
fn distinct_free_ports() -> [u16; 3] {
    let mut ports: Vec<u16> = Vec::with_capacity(3);
    while ports.len() < 3 {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    [ports[0], ports[1], ports[2]]
}

/// Whether a start failed because another process took one of the chosen ports.
fn is_port_conflict(err: &TestkitError) -> bool {
    match err {
        TestkitError::ServerExited { log_tail, .. } | TestkitError::Timeout { log_tail, .. } => {
            log_tail.contains("Address already in use") || log_tail.contains("os error 98")
        }
        _ => false,
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&loopback(port), Duration::from_millis(500)).is_ok()
}

/// The status code of `GET path` on 127.0.0.1:`port`, or `None` if there is no HTTP
/// answer.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream =
        TcpStream::connect_timeout(&loopback(port), Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .ok()?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut parts = head.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_binds_loopback_only() {
        let config = render_config(Path::new("/tmp/x"), 1, 2, 3);
        assert!(config.contains("api_bind_addr = \"127.0.0.1:1\""));
        assert!(config.contains("rpc_bind_addr = \"127.0.0.1:2\""));
        assert!(config.contains("api_bind_addr = \"127.0.0.1:3\""));
        assert!(config.contains("db_engine = \"sqlite\""));
        assert!(!config.contains("0.0.0.0") && !config.contains("[::]"));
    }

    #[test]
    fn distinct_ports_are_distinct() {
        let [a, b, c] = distinct_free_ports();
        assert!(a != b && b != c && a != c);
    }

    #[test]
    fn http_status_of_closed_port_is_none() {
        assert_eq!(http_status(free_port(), "/"), None);
    }
}
