//! PostgreSQL for slackline's consumer groups.
//!
//! Each consumer group owns one PostgreSQL schema (`thread_state`, `timeline`,
//! `notifier`) and never reads another's: [`connect`] creates the schema when it is
//! missing and opens a pool whose connections have `search_path` set to it, so a
//! service's SQL names its tables without a prefix and its sqlx migrations keep their
//! own `_sqlx_migrations` table inside that schema. Every connection also carries a
//! `statement_timeout`, and the pool an acquire timeout, so a stuck database turns
//! into an error the consumer runtime retries instead of a hung partition.
//!
//! Errors are classified once, in [`StoreError::from`]: a lost connection, a timeout,
//! an exhausted pool, a server shutting down, a write refused by a read-only server
//! during a failover or a lock wait timed out are retryable
//! ([`StoreError::is_retryable`]); anything else is permanent for that input.
//! Services treat a unique violation on a fact key as "already done": see
//! [`is_unique_violation`].

use std::time::Duration;

use slackline_service::Env;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

pub use sqlx;

/// The default `DATABASE_URL` when none is configured (the local server, trust auth).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How to reach PostgreSQL. Its `Debug` hides the password of `DATABASE_URL`
/// (user info and `password=` parameters), so the settings may be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// `DATABASE_URL`: `postgres://user:password@host:port/database?sslmode=...`.
    pub database_url: String,
    /// `DATABASE_MAX_CONNECTIONS`: pool size per service.
    pub max_connections: u32,
    /// `DATABASE_STATEMENT_TIMEOUT_MS`: the server cancels statements running longer.
    pub statement_timeout: Duration,
    /// `DATABASE_ACQUIRE_TIMEOUT_MS`: longest wait for a pooled connection (which
    /// includes connecting).
    pub acquire_timeout: Duration,
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSettings")
            .field(
                "database_url",
                &slackline_service::redact::url(&self.database_url),
            )
            .field("max_connections", &self.max_connections)
            .field("statement_timeout", &self.statement_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

impl StoreSettings {
    /// Settings for `database_url` with the defaults.
    pub fn new(database_url: impl Into<String>) -> Self {
        StoreSettings {
            database_url: database_url.into(),
            max_connections: 8,
            statement_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
        }
    }

    /// `DATABASE_URL` (required), `DATABASE_MAX_CONNECTIONS`,
    /// `DATABASE_STATEMENT_TIMEOUT_MS`, `DATABASE_ACQUIRE_TIMEOUT_MS`.
    pub fn from_env(env: &mut Env) -> Self {
        let url = env.required("DATABASE_URL");
        let defaults = StoreSettings::new(url);
        let max_connections = env.parse_or("DATABASE_MAX_CONNECTIONS", defaults.max_connections);
        if max_connections == 0 {
            env.problem("DATABASE_MAX_CONNECTIONS", "must be at least 1");
        }
        StoreSettings {
            max_connections,
            statement_timeout: Duration::from_millis(
                env.parse_or("DATABASE_STATEMENT_TIMEOUT_MS", 5000_u64),
            ),
            acquire_timeout: Duration::from_millis(
                env.parse_or("DATABASE_ACQUIRE_TIMEOUT_MS", 5000_u64),
            ),
            ..defaults
        }
    }

    fn options(&self) -> Result<PgConnectOptions, StoreError> {
        if !["postgres://", "postgresql://"]
            .iter()
            .any(|scheme| self.database_url.starts_with(scheme))
        {
            return Err(StoreError::Config(
                "DATABASE_URL must start with postgres:// or postgresql://".to_owned(),
            ));
        }
        let options: PgConnectOptions = self
            .database_url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::Config(e.to_string()))?;
        Ok(options.log_statements(tracing::log::LevelFilter::Trace))
    }
}

/// What went wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or did not answer in time: the connection
    /// was lost or refused, a statement or a lock wait timed out, the pool had no
    /// connection free, the server is shutting down, or it refused a write because it
    /// is read-only for now (a primary switch). Retrying later is the right thing to
    /// do.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The statement failed for a reason retrying will not fix (a constraint, bad
    /// data, a bug).
    #[error("database error: {0}")]
    Query(String),
    /// `DATABASE_URL` is not a PostgreSQL URL, or a schema name is not an identifier.
    #[error("database configuration: {0}")]
    Config(String),
    /// A migration failed.
    #[error("migrating schema {schema}: {message}")]
    Migrate {
        /// The schema.
        schema: String,
        /// What failed.
        message: String,
    },
}

impl StoreError {
    /// Whether retrying the same work later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// SQLSTATE classes that mean "the server or the connection", not "the statement":
/// connection exceptions (08), insufficient resources (53), operator intervention
/// (57: admin shutdown, `pg_terminate_backend`, query canceled by `statement_timeout`,
/// the server starting up), serialization failures, deadlocks and recovery conflicts
/// (40), system errors (58).
const RETRYABLE_CLASSES: [&str; 5] = ["08", "53", "57", "40", "58"];

/// Single codes of other classes that a failover or a busy server causes, which the
/// same statement survives later:
/// - `25006` read_only_sql_transaction: a write reached a server that is (still or
///   already) a standby during a primary switch, or a database put read-only for
///   maintenance;
/// - `55P03` lock_not_available: a lock wait hit `lock_timeout` (or `NOWAIT`), as
///   under a migration or a long maintenance statement;
/// - `25P03` idle_in_transaction_session_timeout and `25P04` transaction_timeout: the
///   server ended the session, like a terminated backend;
/// - `72000` snapshot_too_old: a long statement outlived its snapshot.
const RETRYABLE_CODES: [&str; 5] = ["25006", "55P03", "25P03", "25P04", "72000"];

/// Whether SQLSTATE `code` is transient ([`RETRYABLE_CLASSES`], [`RETRYABLE_CODES`]).
fn retryable_sqlstate(code: &str) -> bool {
    RETRYABLE_CLASSES
        .iter()
        .any(|class| code.starts_with(class))
        || RETRYABLE_CODES.contains(&code)
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        let message = error.to_string();
        match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(message),
            sqlx::Error::Database(db) => match db.code() {
                Some(code) if retryable_sqlstate(&code) => StoreError::Unavailable(message),
                _ => StoreError::Query(message),
            },
            sqlx::Error::Configuration(_) => StoreError::Config(message),
            _ => StoreError::Query(message),
        }
    }
}

/// Whether `error` is a unique violation (SQLSTATE 23505): for an insert of a fact
/// key, "this was done already".
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

fn check_identifier(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(StoreError::Config(format!(
            "schema name {schema:?} must be lowercase letters, digits and _"
        )))
    }
}

/// Creates `schema` if it does not exist, then opens a pool whose connections use it
/// as their `search_path`, with the settings' statement and acquire timeouts. The
/// first connection is made here, so an unreachable database fails start-up.
///
/// # Errors
///
/// [`StoreError::Config`] for a bad URL or schema name, [`StoreError::Unavailable`]
/// when the database cannot be reached.
pub async fn connect(settings: &StoreSettings, schema: &str) -> Result<PgPool, StoreError> {
    check_identifier(schema)?;
    let options = settings.options()?;
    create_schema(&options, schema).await?;
    let statement_timeout_ms = settings.statement_timeout.as_millis().to_string();
    let options = options.options([
        ("search_path", schema),
        ("statement_timeout", statement_timeout_ms.as_str()),
    ]);
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(true)
        .connect_with(options)
        .await?;
    Ok(pool)
}

async fn create_schema(options: &PgConnectOptions, schema: &str) -> Result<(), StoreError> {
    let mut conn = options.connect().await?;
    // Two replicas starting at once may race on the catalog's unique index: the
    // loser's error means the schema is there.
    let sql = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
    match sqlx::query(&sql).execute(&mut conn).await {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => {}
        Err(e) => return Err(e.into()),
    }
    conn.close().await?;
    Ok(())
}

/// Runs `migrator` on one connection of `pool` (whose `search_path` is `schema`).
/// sqlx takes an advisory lock, so replicas starting together migrate once: the others
/// wait for the lock. That wait and the migrations themselves (an index build, say)
/// may take longer than the pool's `statement_timeout`, so it is lifted on this
/// connection, which is closed afterwards rather than returned to the pool.
///
/// # Errors
///
/// [`StoreError::Migrate`] when a migration fails or an applied one was changed.
pub async fn migrate(
    pool: &PgPool,
    schema: &str,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    let failed = |message: String| StoreError::Migrate {
        schema: schema.to_owned(),
        message,
    };
    let mut conn = pool.acquire().await?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let result = migrator
        .run(&mut *conn)
        .await
        .map_err(|e| failed(e.to_string()));
    // The connection carries the lifted timeout: do not hand it to the service.
    let _ = conn.detach().close().await;
    result
}

/// Connects to `schema` and brings it up to date: what each consumer group does when
/// it starts.
///
/// # Errors
///
/// As [`connect`] and [`migrate`].
pub async fn connect_migrated(
    settings: &StoreSettings,
    schema: &str,
    migrator: &sqlx::migrate::Migrator,
) -> Result<PgPool, StoreError> {
    let pool = connect(settings, schema).await?;
    migrate(&pool, schema, migrator).await?;
    Ok(pool)
}

/// Migrates `schema` and disconnects (`slackline migrate`).
///
/// # Errors
///
/// As [`connect`] and [`migrate`].
pub async fn migrate_schema(
    settings: &StoreSettings,
    schema: &str,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    let pool = connect_migrated(settings, schema, migrator).await?;
    pool.close().await;
    Ok(())
}

/// `/readyz` for a service that needs its database: ready while [`ping`] succeeds.
pub fn readiness(pool: &PgPool) -> slackline_service::Readiness {
    let pool = pool.clone();
    slackline_service::Readiness::new(move || {
        let pool = pool.clone();
        async move { ping(&pool).await.map_err(|e| e.to_string()) }
    })
}

/// Checks that the database answers (for `/readyz`).
///
/// # Errors
///
/// The error when it does not.
pub async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

/// Waits `delay` between attempts of `work` while it fails in a retryable way, at
/// most `attempts` times in all: for short blips (a terminated backend, a failover)
/// inside one handler call, before the consumer runtime's own retries take over.
///
/// # Errors
///
/// The last error, or the first permanent one.
pub async fn with_retries<T, F, Fut>(
    attempts: u32,
    delay: Duration,
    mut work: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match work().await {
            Err(e) if e.is_retryable() && attempt < attempts => {
                tracing::debug!(error = %e, attempt, "retrying database work");
                attempt += 1;
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_env_name_every_problem() {
        let mut env = Env::from_pairs([("DATABASE_MAX_CONNECTIONS", "0")]);
        let _ = StoreSettings::from_env(&mut env);
        let err = env.finish().unwrap_err().to_string();
        assert!(err.contains("DATABASE_URL"), "{err}");
        assert!(err.contains("DATABASE_MAX_CONNECTIONS"), "{err}");
    }

    #[test]
    fn settings_defaults() {
        let mut env = Env::from_pairs([("DATABASE_URL", "postgres://x@h/db")]);
        let s = StoreSettings::from_env(&mut env);
        env.finish().unwrap();
        assert_eq!(s, StoreSettings::new("postgres://x@h/db"));
    }

    #[test]
    fn schema_names_are_identifiers() {
        for bad in ["", "Thread", "a-b", "a;drop", "1x"] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
        check_identifier("thread_state").unwrap();
    }

    #[test]
    fn sqlstate_classes() {
        assert!(retryable_sqlstate("57P01"), "admin shutdown");
        assert!(retryable_sqlstate("57014"), "statement timeout");
        assert!(retryable_sqlstate("08006"));
        assert!(retryable_sqlstate("40001"));
        assert!(!retryable_sqlstate("23505"));
        assert!(!retryable_sqlstate("42P01"));
    }

    #[test]
    fn failover_and_lock_timeout_codes_are_retryable() {
        assert!(retryable_sqlstate("25006"), "read_only_sql_transaction");
        assert!(retryable_sqlstate("55P03"), "lock_not_available");
        assert!(
            retryable_sqlstate("25P03"),
            "idle_in_transaction_session_timeout"
        );
        assert!(retryable_sqlstate("25P04"), "transaction_timeout");
        assert!(retryable_sqlstate("72000"), "snapshot_too_old");
        // Their classes' other codes are about the statement.
        assert!(!retryable_sqlstate("25001"), "active_sql_transaction");
        assert!(!retryable_sqlstate("25P02"), "in_failed_sql_transaction");
        assert!(
            !retryable_sqlstate("55000"),
            "object_not_in_prerequisite_state"
        );
        assert!(!retryable_sqlstate("55006"), "object_in_use");
    }

    #[test]
    fn debug_hides_the_password() {
        let settings = StoreSettings::new(
            "postgres://app:hunter2-pg@db:5432/x?sslmode=require&password=also-secret",
        );
        let debug = format!("{settings:?}");
        assert!(!debug.contains("hunter2-pg"), "{debug}");
        assert!(!debug.contains("also-secret"), "{debug}");
        assert!(
            debug.contains("postgres://app:<redacted>@db:5432/x?sslmode=require"),
            "{debug}"
        );
        assert!(debug.contains("max_connections: 8"), "{debug}");
    }
}
