//! `slackline migrate`: creates or updates every consumer group's PostgreSQL schema
//! (`thread_state`, `timeline`, `notifier`, `slack_sender`) with the migrations compiled into the
//! services. Each service also migrates its own schema when it starts; this command is
//! for deployments that run migrations as a separate step (a Kubernetes Job).

use slackline_store::{StoreError, StoreSettings};

/// `slackline migrate`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

/// `slackline migrate`: migrates every schema and prints each one.
///
/// # Errors
///
/// The first schema that fails.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let settings = StoreSettings::new(args.database_url);
    for schema in migrate_all(&settings).await? {
        println!("migrated {schema}");
    }
    Ok(())
}

/// Migrates the four schemas, in order; returns the schemas migrated.
///
/// # Errors
///
/// The first schema that fails.
pub async fn migrate_all(settings: &StoreSettings) -> Result<Vec<&'static str>, StoreError> {
    slackline_thread_state::migrate(settings).await?;
    slackline_timeline_writer::migrate(settings).await?;
    slackline_notifier::migrate(settings).await?;
    slackline_slack_sender::migrate(settings).await?;
    Ok(vec![
        slackline_thread_state::SCHEMA,
        slackline_timeline_writer::SCHEMA,
        slackline_notifier::SCHEMA,
        slackline_slack_sender::SCHEMA,
    ])
}
