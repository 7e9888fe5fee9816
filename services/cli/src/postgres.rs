//! The PostgreSQL `slackline dev` uses when `DATABASE_URL` is not set: the local
//! server when one answers on 127.0.0.1:5432 (as `postgres`, then as the tests'
//! `slackline` role; database `slackline_dev`, created when missing), else a
//! throwaway cluster of its own, made with the installed PostgreSQL's `initdb` and
//! `pg_ctl` under the state directory and stopped with the stack. On a machine
//! without PostgreSQL's binaries, `dev` running as root installs Debian's
//! `postgresql` package with apt-get (and says so); otherwise it names what to
//! install. It always says which database it uses.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use slackline_store::sqlx::{self, Connection, PgConnection};

/// The local server `dev` tries first.
pub const LOCAL_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The local server as the tests' role (`scripts/test` creates it), tried next.
pub const LOCAL_TEST_ROLE_URL: &str = "postgres://slackline:slackline@127.0.0.1:5432/postgres";
/// The local server URLs `dev` tries, in order.
pub const LOCAL_SERVER_URLS: [&str; 2] = [LOCAL_SERVER_URL, LOCAL_TEST_ROLE_URL];
/// The database `dev` uses on a server it did not start.
pub const DEV_DATABASE: &str = "slackline_dev";

/// Which PostgreSQL to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseChoice {
    /// `DATABASE_URL`: use it as it is.
    Url(String),
    /// The local server when one answers, else a throwaway cluster.
    Auto,
    /// Always a throwaway cluster under the state directory.
    Embedded,
}

/// Errors providing a database.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// No `initdb`/`pg_ctl` found, and `dev` cannot install them.
    #[error(
        "no PostgreSQL server answers on 127.0.0.1:5432 and no PostgreSQL binaries were \
         found (looked for pg_config and /usr/lib/postgresql/*/bin); {why}: install \
         PostgreSQL's server (Debian/Ubuntu: `sudo apt-get install postgresql`; others: \
         the package that provides initdb and pg_ctl), or set DATABASE_URL"
    )]
    NoBinaries {
        /// Why `dev` did not install them itself.
        why: String,
    },
    /// Installing PostgreSQL with apt-get failed.
    #[error("installing PostgreSQL (`{command}`) failed: {output}")]
    Install {
        /// The command.
        command: String,
        /// What it printed (its end).
        output: String,
    },
    /// A PostgreSQL command failed.
    #[error("`{command}` failed: {output}")]
    Command {
        /// The command.
        command: String,
        /// What it printed.
        output: String,
    },
    /// Connecting or creating the database failed.
    #[error("{0}")]
    Sql(#[from] sqlx::Error),
}

/// The database `dev` runs on, and the cluster it started (stopped on drop).
#[derive(Debug)]
pub struct DevDatabase {
    /// The URL the services use.
    pub url: String,
    /// A line for the operator: which database this is.
    pub description: String,
    cluster: Option<Cluster>,
}

impl DevDatabase {
    /// Whether `dev` started this cluster itself.
    pub fn is_embedded(&self) -> bool {
        self.cluster.is_some()
    }
}

/// Provides the database for `choice`, with `dir` as the state directory.
///
/// # Errors
///
/// When no database can be reached or started.
pub async fn provide(choice: &DatabaseChoice, dir: &Path) -> Result<DevDatabase, PostgresError> {
    match choice {
        DatabaseChoice::Url(url) => Ok(DevDatabase {
            url: url.clone(),
            description: "DATABASE_URL".to_owned(),
            cluster: None,
        }),
        DatabaseChoice::Auto => {
            for server_url in LOCAL_SERVER_URLS {
                let answered =
                    tokio::time::timeout(Duration::from_secs(2), PgConnection::connect(server_url))
                        .await;
                if let Ok(Ok(conn)) = answered {
                    let url = ensure_database(conn, server_url).await?;
                    let user = server_url
                        .trim_start_matches("postgres://")
                        .split([':', '@'])
                        .next()
                        .unwrap_or_default();
                    return Ok(DevDatabase {
                        url,
                        description: format!(
                            "the local PostgreSQL server at 127.0.0.1:5432 (as {user}), \
                             database {DEV_DATABASE}"
                        ),
                        cluster: None,
                    });
                }
            }
            embedded(dir).await
        }
        DatabaseChoice::Embedded => embedded(dir).await,
    }
}

/// Creates [`DEV_DATABASE`] on the server `conn` is connected to when it is missing,
/// and returns its URL.
async fn ensure_database(
    mut conn: PgConnection,
    server_url: &str,
) -> Result<String, PostgresError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(DEV_DATABASE)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        if let Err(e) = sqlx::query(&format!("CREATE DATABASE {DEV_DATABASE}"))
            .execute(&mut conn)
            .await
        {
            // Two `dev` runs starting together: the other one created it
            // (duplicate_database, or the catalog's unique index).
            let duplicate =
                matches!(&e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P04"));
            if !duplicate && !slackline_store::is_unique_violation(&e) {
                return Err(e.into());
            }
        }
    }
    conn.close().await?;
    let base = server_url
        .rsplit_once('/')
        .map_or(server_url, |(base, _)| base);
    Ok(format!("{base}/{DEV_DATABASE}"))
}

/// The directory holding `initdb` and `pg_ctl`, installing PostgreSQL first when
/// they are missing and `dev` can (as root, with apt-get).
fn bin_dir_or_install() -> Result<PathBuf, PostgresError> {
    if let Some(bin) = bin_dir() {
        return Ok(bin);
    }
    let apt_get = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("apt-get"))
            .find(|p| p.is_file())
    });
    match (is_root(), apt_get) {
        (true, Some(apt_get)) => {
            eprintln!(
                "PostgreSQL is not installed: installing Debian's postgresql package \
                 (apt-get install postgresql) for the throwaway dev cluster"
            );
            apt_install(&apt_get)?;
            bin_dir().ok_or_else(|| PostgresError::NoBinaries {
                why: "apt-get installed postgresql, but initdb is still not found".to_owned(),
            })
        }
        (root, apt_get) => Err(PostgresError::NoBinaries {
            why: why_not_installed(root, apt_get.is_some()),
        }),
    }
}

/// Why `dev` does not install PostgreSQL itself: it does only as root with apt-get
/// (a fresh Debian or Ubuntu machine or container).
fn why_not_installed(root: bool, apt_get: bool) -> String {
    if root {
        if apt_get {
            "apt-get is there but was not used".to_owned()
        } else {
            "no apt-get, so `slackline dev` cannot install it".to_owned()
        }
    } else {
        "not root, so `slackline dev` does not install it".to_owned()
    }
}

fn apt_install(apt_get: &Path) -> Result<(), PostgresError> {
    let attempt = |args: &[&str]| -> Result<(), PostgresError> {
        let line = format!("apt-get {}", args.join(" "));
        let out = Command::new(apt_get)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| PostgresError::Install {
                command: line.clone(),
                output: e.to_string(),
            })?;
        if out.status.success() {
            return Ok(());
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let tail: String = {
            let start = text.len().saturating_sub(2000);
            let start = (start..text.len())
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(text.len());
            text[start..].to_owned()
        };
        Err(PostgresError::Install {
            command: line,
            output: format!("{}: {tail}", out.status),
        })
    };
    let install = [
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "postgresql",
    ];
    if attempt(&install).is_ok() {
        return Ok(());
    }
    // A fresh image has no package lists yet.
    attempt(&["update", "-q"])?;
    attempt(&install)
}

fn bin_dir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").exists() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A cluster started with `pg_ctl`; stopped on drop.
#[derive(Debug)]
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
}

/// PostgreSQL refuses to run as root: as root, the cluster is owned by and run as the
/// `postgres` user (through `runuser`).
fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn run(bin: &Path, tool: &str, args: &[&str], as_postgres: bool) -> Result<(), PostgresError> {
    let program = bin.join(tool);
    let mut command = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&program);
        c
    } else {
        Command::new(&program)
    };
    command.args(args);
    let line = format!("{} {}", program.display(), args.join(" "));
    let out = command.output().map_err(|e| PostgresError::Command {
        command: line.clone(),
        output: e.to_string(),
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PostgresError::Command {
            command: line,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

fn io_error(what: &str, e: std::io::Error) -> PostgresError {
    PostgresError::Command {
        command: what.to_owned(),
        output: e.to_string(),
    }
}

async fn embedded(dir: &Path) -> Result<DevDatabase, PostgresError> {
    let dir = dir.to_path_buf();
    // initdb and pg_ctl block for seconds: off the async threads.
    let (cluster, port, description) = tokio::task::spawn_blocking(move || start_cluster(&dir))
        .await
        .map_err(|e| io_error("starting the cluster", std::io::Error::other(e.to_string())))??;
    let server_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let conn = PgConnection::connect(&server_url).await?;
    let url = ensure_database(conn, &server_url).await?;
    Ok(DevDatabase {
        url,
        description,
        cluster: Some(cluster),
    })
}

/// Makes the cluster when it does not exist yet and starts it on a free port.
fn start_cluster(dir: &Path) -> Result<(Cluster, u16, String), PostgresError> {
    let bin = bin_dir_or_install()?;
    let root = dir.join("postgres");
    std::fs::create_dir_all(&root).map_err(|e| io_error("creating the cluster directory", e))?;
    let root = root
        .canonicalize()
        .map_err(|e| io_error("resolving the cluster directory", e))?;
    let data = root.join("data");
    let as_postgres = is_root();
    if as_postgres {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&root)
            .status()
            .map_err(|e| io_error("chown", e))?;
        if !status.success() {
            return Err(PostgresError::Command {
                command: format!("chown -R postgres {}", root.display()),
                output: status.to_string(),
            });
        }
    }
    let data_arg = data.display().to_string();
    if !data.join("PG_VERSION").exists() {
        run(
            &bin,
            "initdb",
            &[
                "-D",
                &data_arg,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            as_postgres,
        )?;
    }
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| io_error("finding a free port", e))?;
        listener
            .local_addr()
            .map_err(|e| io_error("finding a free port", e))?
            .port()
    };
    let log = root.join("postgres.log").display().to_string();
    let options = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
        root.display()
    );
    // A `dev` that was killed leaves its cluster running: stop it first (it is ours;
    // the new one gets a new port). `pg_ctl status` fails when nothing runs.
    if run(&bin, "pg_ctl", &["-D", &data_arg, "status"], as_postgres).is_ok() {
        run(
            &bin,
            "pg_ctl",
            &["-D", &data_arg, "-m", "fast", "-w", "stop"],
            as_postgres,
        )?;
    }
    run(
        &bin,
        "pg_ctl",
        &[
            "-D", &data_arg, "-l", &log, "-o", &options, "-w", "-t", "60", "start",
        ],
        as_postgres,
    )?;
    let cluster = Cluster {
        bin,
        data,
        as_postgres,
    };
    let description = format!(
        "a throwaway PostgreSQL cluster in {} on port {port} (log: {log})",
        root.display()
    );
    Ok((cluster, port, description))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        if let Err(e) = run(
            &self.bin,
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "stop"],
            self.as_postgres,
        ) {
            eprintln!("stopping the dev PostgreSQL cluster: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_root_or_apt_get_the_error_says_what_to_install() {
        let not_root = PostgresError::NoBinaries {
            why: why_not_installed(false, true),
        }
        .to_string();
        assert!(not_root.contains("not root"), "{not_root}");
        assert!(
            not_root.contains("apt-get install postgresql"),
            "says what to install: {not_root}"
        );
        let no_apt = why_not_installed(true, false);
        assert!(no_apt.contains("no apt-get"), "{no_apt}");
    }

    #[test]
    fn local_candidates_are_the_postgres_user_then_the_test_role() {
        assert_eq!(
            LOCAL_SERVER_URLS[0],
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
        assert_eq!(
            LOCAL_SERVER_URLS[1],
            "postgres://slackline:slackline@127.0.0.1:5432/postgres"
        );
    }
}
