//! The store against a real PostgreSQL: schema-scoped pools, migrations that outlast
//! the statement timeout and run once under concurrency, and error classification
//! (killed connection and statement timeout retryable, duplicate key a unique
//! violation, bad SQL permanent, a write to a read-only database and a lock wait
//! timed out retryable).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use slackline_store::{connect, is_unique_violation, migrate, ping, StoreError, StoreSettings};
use slackline_testkit::postgres::TestDatabase;
use sqlx::migrate::Migrator;
use sqlx::Connection;

async fn slow_migrator(dir: &std::path::Path) -> Migrator {
    std::fs::write(
        dir.join("0001_slow.sql"),
        "SELECT pg_sleep(0.6);\nCREATE TABLE things (id int PRIMARY KEY);\n",
    )
    .unwrap();
    Migrator::new(dir.to_path_buf()).await.unwrap()
}

#[tokio::test]
async fn migrations_outlast_the_statement_timeout_and_run_once_under_concurrency() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let migrator = slow_migrator(dir.path()).await;
    let mut settings = StoreSettings::new(&db.url);
    settings.statement_timeout = Duration::from_millis(200);
    let a = connect(&settings, "things_schema").await.unwrap();
    let b = connect(&settings, "things_schema").await.unwrap();
    // Two replicas starting together: one migrates, the other waits for the lock
    // longer than its statement timeout.
    let (ra, rb) = tokio::join!(
        migrate(&a, "things_schema", &migrator),
        migrate(&b, "things_schema", &migrator)
    );
    ra.unwrap();
    rb.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&a)
        .await
        .unwrap();
    assert_eq!(applied, 1);
    // The table is in the service's schema, found without a prefix.
    sqlx::query("INSERT INTO things VALUES (1)")
        .execute(&a)
        .await
        .unwrap();
    let qualified: i64 = sqlx::query_scalar("SELECT count(*) FROM things_schema.things")
        .fetch_one(&b)
        .await
        .unwrap();
    assert_eq!(qualified, 1);
    // The pool's connections keep the statement timeout: a slow statement is cut and
    // the error is retryable.
    let slow = sqlx::query("SELECT pg_sleep(1)")
        .execute(&a)
        .await
        .unwrap_err();
    let slow = StoreError::from(slow);
    assert!(slow.is_retryable(), "{slow}");
    // A duplicate is recognisable; bad SQL is permanent.
    let dup = sqlx::query("INSERT INTO things VALUES (1)")
        .execute(&a)
        .await
        .unwrap_err();
    assert!(is_unique_violation(&dup));
    assert!(!StoreError::from(dup).is_retryable());
    let bad = sqlx::query("SELECT * FROM no_such_table")
        .execute(&a)
        .await
        .unwrap_err();
    assert!(!StoreError::from(bad).is_retryable());
    a.close().await;
    b.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_killed_connection_is_retryable_and_the_pool_recovers() {
    let db = TestDatabase::create().await;
    let pool = connect(&StoreSettings::new(&db.url), "killed")
        .await
        .unwrap();
    ping(&pool).await.unwrap();
    let held = tokio::spawn({
        let pool = pool.clone();
        async move { sqlx::query("SELECT pg_sleep(5)").execute(&pool).await }
    });
    // Wait for the sleeping statement, then kill every backend of the database.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while db.terminate_connections().await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no connection to kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = StoreError::from(held.await.unwrap().unwrap_err());
    assert!(err.is_retryable(), "{err}");
    // The next statements get fresh connections.
    slackline_store::with_retries(5, Duration::from_millis(50), || ping(&pool))
        .await
        .unwrap();
    pool.close().await;
    db.drop_database().await;
}

#[tokio::test]
async fn an_unreachable_database_fails_start_up_as_unavailable() {
    let port = slackline_testkit::free_port();
    let mut settings = StoreSettings::new(format!("postgres://postgres@127.0.0.1:{port}/x"));
    settings.acquire_timeout = Duration::from_secs(1);
    let err = connect(&settings, "x").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let err = connect(&StoreSettings::new("mysql://nope"), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err}");
}

#[tokio::test]
async fn a_read_only_database_and_a_lock_timeout_are_retryable() {
    let db = TestDatabase::create().await;
    let pool = connect(&StoreSettings::new(&db.url), "failover")
        .await
        .unwrap();
    sqlx::query("CREATE TABLE things (id int PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();

    // A primary switch: the sessions now reach a server that refuses writes.
    db.set_read_only(true).await;
    let write = || async {
        sqlx::query("INSERT INTO things VALUES (1)")
            .execute(&pool)
            .await
            .map_err(StoreError::from)
    };
    let err = slackline_store::with_retries(5, Duration::from_millis(50), write)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    assert!(err.is_retryable(), "{err}");
    // Reads go on, and the write lands once the database is writable again.
    ping(&pool).await.unwrap();
    db.set_read_only(false).await;
    slackline_store::with_retries(20, Duration::from_millis(50), write)
        .await
        .unwrap();

    // A lock wait cut by lock_timeout (55P03 lock_not_available).
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE things IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut waiter = pool.acquire().await.unwrap();
    sqlx::query("SET lock_timeout = '100ms'")
        .execute(&mut *waiter)
        .await
        .unwrap();
    let err = sqlx::query("INSERT INTO things VALUES (2)")
        .execute(&mut *waiter)
        .await
        .unwrap_err();
    let code = match &err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    };
    assert_eq!(code.as_deref(), Some("55P03"), "{err}");
    let err = StoreError::from(err);
    assert!(err.is_retryable(), "{err}");
    holder.rollback().await.unwrap();
    sqlx::query("INSERT INTO things VALUES (2)")
        .execute(&mut *waiter)
        .await
        .unwrap();
    waiter.detach().close().await.unwrap();

    pool.close().await;
    db.drop_database().await;
}
