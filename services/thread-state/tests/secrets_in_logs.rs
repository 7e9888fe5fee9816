//! Secrets stay out of the logs: the `slackline-thread-state` binary run with a
//! `DATABASE_URL` that carries a real password (a role of its own on the test server)
//! and `KAFKA_PROPERTIES` with SASL/TLS secrets, at `RUST_LOG=debug`, logs its
//! configuration at start, joins its group on the real broker, handles an event and
//! stops, and none of the secrets appears in anything it printed; nor when librdkafka
//! refuses a secret property at start. The configuration's `Debug` (what the
//! start-up line prints) hides them as well.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use slackline_events::AuthorKind;
use slackline_service::Env;
use slackline_testkit::postgres::TestDatabase;
use slackline_thread_state::ThreadStateConfig;
use sqlx::Connection;

/// `url` with its user info replaced by `user:password`.
fn with_credentials(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host_and_path = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    format!("{scheme}://{user}:{password}@{host_and_path}")
}

/// The secret values, distinctive enough that any appearance is a leak.
struct Secrets {
    db_password: String,
    properties: Vec<(&'static str, String)>,
}

impl Secrets {
    fn new(tag: &str) -> Secrets {
        Secrets {
            db_password: format!("pg-Pw-{tag}"),
            properties: vec![
                ("sasl.password", format!("sasl-Pw-{tag}")),
                ("ssl.key.password", format!("key-Pw-{tag}")),
                ("ssl.keystore.password", format!("keystore-Pw-{tag}")),
            ],
        }
    }

    /// `sasl.oauthbearer.client.secret`, which this workspace's librdkafka (built
    /// without libcurl, so without OAuth/OIDC) refuses, repeating the value in its
    /// error.
    fn with_refused_property(mut self, tag: &str) -> Secrets {
        self.properties.push((
            "sasl.oauthbearer.client.secret",
            format!("oauth-Secret-{tag}"),
        ));
        self
    }

    fn all(&self) -> Vec<&str> {
        let mut all = vec![self.db_password.as_str()];
        all.extend(self.properties.iter().map(|(_, v)| v.as_str()));
        all
    }

    /// `KAFKA_PROPERTIES`: the secrets (ignored by a PLAINTEXT listener), a user name,
    /// and the tests' group timings.
    fn kafka_properties(&self) -> String {
        let mut out = String::from(
            "session.timeout.ms=6000;heartbeat.interval.ms=200;sasl.username=svc-user",
        );
        for (k, v) in &self.properties {
            out.push_str(&format!(";{k}={v}"));
        }
        out
    }
}

/// The server's test role creates a login role with `password` that owns `db`.
async fn create_role(db: &TestDatabase, role: &str, password: &str) {
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(&format!("ALTER DATABASE {} OWNER TO {role}", db.name))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

/// Drops the role when the test ends, passed or not (a role, unlike a test
/// database, outlives the run otherwise): gives what it owns (the database, its
/// schema) back to the test role first.
struct RoleGuard {
    url: String,
    role: String,
}

impl Drop for RoleGuard {
    fn drop(&mut self) {
        let (url, role) = (self.url.clone(), self.role.clone());
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let mut conn = sqlx::PgConnection::connect(&url).await?;
                    for sql in [
                        format!("REASSIGN OWNED BY {role} TO CURRENT_USER"),
                        format!("DROP ROLE {role}"),
                    ] {
                        sqlx::query(&sql).execute(&mut conn).await?;
                    }
                    conn.close().await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop role {}: {dropped:?}", self.role);
        }
    }
}

/// Everything the child wrote to stderr so far.
fn collect(mut from: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    });
    out
}

/// A running `slackline-thread-state` and what it printed.
struct Service {
    child: std::process::Child,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

impl Service {
    fn spawn(env: &[(String, String)]) -> Service {
        let mut child = Command::new(env!("CARGO_BIN_EXE_slackline-thread-state"))
            .env_clear()
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = collect(child.stderr.take().unwrap());
        let stdout = collect(child.stdout.take().unwrap());
        Service {
            child,
            stderr,
            stdout,
        }
    }

    /// SIGTERM unless it exited already, then waits for the exit; returns whether it
    /// succeeded and everything it printed (stderr, then stdout).
    async fn stop(mut self) -> (bool, String) {
        if self.child.try_wait().unwrap().is_none() {
            let status = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        let exit = self
            .wait_exit(Duration::from_secs(30))
            .await
            .expect("exits");
        // The readers drain the pipes once the process is gone.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let printed = format!(
            "{}{}",
            self.stderr.lock().unwrap(),
            self.stdout.lock().unwrap()
        );
        (exit.success(), printed)
    }

    async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return Some(exit);
            }
            if start.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn assert_no_secret(secrets: &Secrets, database_url: &str, printed: &str) {
    for secret in secrets.all() {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
    assert!(
        !printed.contains(database_url),
        "the database URL printed:\n{printed}"
    );
}

async fn wait_for_line(log: &Mutex<String>, needle: &str, timeout: Duration) {
    let start = Instant::now();
    while !log.lock().unwrap().contains(needle) {
        assert!(
            start.elapsed() < timeout,
            "no {needle:?} in the log after {timeout:?}:\n{}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_the_debug_output_and_the_logs() {
    let cluster = cluster();
    let db = TestDatabase::create().await;
    let tag = slackline_testkit::unique_name("s").replace(['-', '.'], "_");
    let role = format!("slackline_secret_{tag}");
    let secrets = Secrets::new(&tag);
    create_role(&db, &role, &secrets.db_password).await;
    let role_guard = RoleGuard {
        url: db.url.clone(),
        role: role.clone(),
    };
    let database_url = with_credentials(&db.url, &role, &secrets.db_password);
    let names = cluster.names();
    let env = |secrets: &Secrets| -> Vec<(String, String)> {
        [
            ("KAFKA_BOOTSTRAP_SERVERS", cluster.bootstrap_servers()),
            ("KAFKA_PROPERTIES", secrets.kafka_properties()),
            ("GROUP_ID", names.group(GROUP)),
            ("SOURCE_TOPIC", names.messages()),
            ("THREAD_EVENTS_TOPIC", names.thread_events()),
            ("DATABASE_URL", database_url.clone()),
            ("ADMIN_ADDR", "127.0.0.1:0".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "debug".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    };

    // The configuration's Debug, as the start-up line prints it.
    let every_secret = Secrets::new(&tag).with_refused_property(&tag);
    let config = ThreadStateConfig::from_env(Env::from_pairs(env(&every_secret))).unwrap();
    let debug = format!("{config:?}");
    assert_no_secret(&every_secret, &database_url, &debug);
    assert!(debug.contains(&format!("{role}:<redacted>@")), "{debug}");
    assert!(debug.contains("sasl.username"), "{debug}");
    assert!(debug.contains("svc-user"), "{debug}");

    // The service itself, on the real broker and the real database.
    let service = Service::spawn(&env(&secrets));
    wait_for_line(
        &service.stderr,
        "partitions assigned",
        Duration::from_secs(60),
    )
    .await;
    produce(
        &cluster,
        &[post(
            "Ev-secret-1",
            "C0SECRET",
            "1700000000.000100",
            AuthorKind::Customer,
            "U0CUST",
        )],
    )
    .await;
    wait_for_line(&service.stderr, "fact applied", Duration::from_secs(60)).await;
    let (clean, printed) = service.stop().await;
    assert!(clean, "a clean stop:\n{printed}");
    println!("{} bytes printed by a run", printed.len());
    for needle in [
        "thread-state starting",
        "consumer runtime started",
        "<redacted>",
    ] {
        assert!(
            printed.contains(needle),
            "{needle:?} missing from:\n{printed}"
        );
    }
    assert_no_secret(&secrets, &database_url, &printed);

    // A secret property librdkafka refuses: the start fails, and says which property
    // without its value.
    let mut service = Service::spawn(&env(&every_secret));
    let exited = service.wait_exit(Duration::from_secs(30)).await;
    let (clean, printed) = service.stop().await;
    println!("with a refused property: exited {exited:?}:\n{printed}");
    assert!(!clean, "this build refuses sasl.oauthbearer.client.secret");
    assert!(
        printed.contains("sasl.oauthbearer.client.secret <redacted>"),
        "{printed}"
    );
    assert_no_secret(&every_secret, &database_url, &printed);

    drop(role_guard);
    db.drop_database().await;
}
