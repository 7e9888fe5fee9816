//! A throwaway PostgreSQL database per test on the machine's server, so tests run in
//! parallel without sharing tables.
//!
//! The server is `TEST_DATABASE_URL` (default: the local server and the test role that
//! `scripts/test` creates, `postgres://slackline:slackline@127.0.0.1:5432/postgres`). Each [`TestDatabase`] is a new
//! database named `slackline_test_<unique>`; [`TestDatabase::drop_database`] removes
//! it, and `./scripts/test` removes any that a crashed run left behind.

use sqlx::{Connection, PgConnection};

/// The server tests create their databases on, when `TEST_DATABASE_URL` is unset.
pub const DEFAULT_ADMIN_URL: &str = "postgres://slackline:slackline@127.0.0.1:5432/postgres";

/// A database of one's own.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// The database name.
    pub name: String,
    /// Its URL, for `DATABASE_URL`.
    pub url: String,
    admin_url: String,
}

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

impl TestDatabase {
    /// Creates a new empty database.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached: the test cannot run.
    pub async fn create() -> TestDatabase {
        let admin_url = admin_url();
        let name = crate::unique_name("slackline_test").replace(['-', '.'], "_");
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {admin_url} (TEST_DATABASE_URL): {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = conn.close().await;
        TestDatabase {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        }
    }

    /// Kills every connection to the database (`pg_terminate_backend`), as a server
    /// restart or a failover would; returns how many there were.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached.
    pub async fn terminate_connections(&self) -> i64 {
        let mut conn = PgConnection::connect(&self.admin_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.admin_url));
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("pg_terminate_backend: {e}"));
        let _ = conn.close().await;
        killed
    }

    /// Makes the database read-only (`true`) or writable again (`false`) for new
    /// sessions (`ALTER DATABASE … SET default_transaction_read_only`), then kills its
    /// connections so the clients' next sessions get the new setting: a write then
    /// fails with SQLSTATE 25006 `read_only_sql_transaction`, as on a standby during a
    /// primary switch. Returns how many connections were killed.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached.
    pub async fn set_read_only(&self, read_only: bool) -> i64 {
        let mut conn = PgConnection::connect(&self.admin_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.admin_url));
        let value = if read_only { "on" } else { "off" };
        sqlx::query(&format!(
            "ALTER DATABASE {} SET default_transaction_read_only = {value}",
            self.name
        ))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("ALTER DATABASE {}: {e}", self.name));
        let _ = conn.close().await;
        self.terminate_connections().await
    }

    /// Drops the database, closing whatever still uses it.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached.
    pub async fn drop_database(self) {
        let mut conn = PgConnection::connect(&self.admin_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.admin_url));
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("DROP DATABASE {}: {e}", self.name));
        let _ = conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}
