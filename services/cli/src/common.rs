//! What several commands share: Kafka settings from `--bootstrap` and
//! `KAFKA_PROPERTIES`, and the PostgreSQL database to read.

use std::path::{Path, PathBuf};

use anyhow::Context;
use slackline_kafka::{parse_properties, KafkaSettings};

/// The database flags of the commands that read PostgreSQL.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL (default: the database of the last `slackline dev` run).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// State directory of `slackline dev`.
    #[arg(long, default_value = ".slackline")]
    pub dir: PathBuf,
}

impl DatabaseArgs {
    /// A pool on the database to read.
    ///
    /// # Errors
    ///
    /// No database URL, or PostgreSQL does not answer.
    pub async fn pool(&self) -> anyhow::Result<slackline_store::sqlx::PgPool> {
        read_pool(self.database_url.clone(), &self.dir).await
    }
}

/// The database to read: the flag or `DATABASE_URL`, else the one `dev` wrote down.
///
/// # Errors
///
/// No database URL, or PostgreSQL does not answer.
pub async fn read_pool(
    database_url: Option<String>,
    dir: &Path,
) -> anyhow::Result<slackline_store::sqlx::PgPool> {
    let url = match database_url {
        Some(url) => url,
        None => {
            let file = dir.join(crate::dev::DATABASE_URL_FILE);
            std::fs::read_to_string(&file)
                .with_context(|| {
                    format!(
                        "no --database-url or DATABASE_URL, and no {} from `slackline dev`",
                        file.display()
                    )
                })?
                .trim()
                .to_owned()
        }
    };
    let pool = slackline_store::sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&url)
        .await
        .context("connecting to PostgreSQL")?;
    Ok(pool)
}

/// Bootstrap from the flag, extra properties from `KAFKA_PROPERTIES`.
///
/// # Errors
///
/// `KAFKA_PROPERTIES` cannot be parsed.
pub fn kafka_settings(bootstrap: String) -> anyhow::Result<KafkaSettings> {
    let properties = match std::env::var("KAFKA_PROPERTIES") {
        Ok(raw) => parse_properties(&raw)
            .map_err(anyhow::Error::msg)
            .context("KAFKA_PROPERTIES")?,
        Err(_) => Vec::new(),
    };
    Ok(KafkaSettings {
        bootstrap_servers: bootstrap,
        properties,
    })
}
