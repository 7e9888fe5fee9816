//! `slackline migrate`: creates each consumer group's schema on an empty database, and
//! running it again (or a service starting after it) changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use slackline::migrate::migrate_all;
use slackline_store::StoreSettings;
use slackline_testkit::postgres::TestDatabase;

async fn tables(url: &str) -> Vec<String> {
    let pool = slackline_store::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    let rows: Vec<(String,)> = slackline_store::sqlx::query_as(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables \
         WHERE table_schema IN ('thread_state', 'timeline', 'notifier', 'slack_sender') ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.into_iter().map(|(t,)| t).collect()
}

#[tokio::test]
async fn migrate_creates_every_schema_once() {
    let db = TestDatabase::create().await;
    let settings = StoreSettings::new(&db.url);
    let migrated = migrate_all(&settings).await.unwrap();
    assert_eq!(
        migrated,
        ["thread_state", "timeline", "notifier", "slack_sender"]
    );
    let first = tables(&db.url).await;
    for expected in [
        "thread_state.threads",
        "thread_state.thread_messages",
        "thread_state.facts",
        "thread_state.transitions",
        "thread_state._sqlx_migrations",
        "timeline.entries",
        "timeline._sqlx_migrations",
        "notifier.sent",
        "notifier._sqlx_migrations",
        "slack_sender.replies",
        "slack_sender._sqlx_migrations",
    ] {
        assert!(
            first.iter().any(|t| t == expected),
            "{expected} in {first:?}"
        );
    }
    migrate_all(&settings).await.unwrap();
    assert_eq!(tables(&db.url).await, first);
    db.drop_database().await;
}
