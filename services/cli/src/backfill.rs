//! `slackline backfill --from <T1> --to <T2> [filters]`: the runbook for "a bug
//! dropped or mangled messages between T1 and T2" in one command, while everything
//! runs. Nothing is stopped: the archive's requests of `[T1, T2)` are replayed onto
//! the raw topic ([`crate::replay`]); the running normalizer normalizes them again
//! (a record with the `slackline-replay` header is never taken for a Slack retry)
//! and the groups' fact keys drop every effect already done (guarantee 2), so only
//! what the bug lost or mangled changes.
//!
//! Deploy the fix first (a normalizer or group that still has the bug redoes it),
//! then run backfill; follow `slackline_normalizer_replayed_total` (it rises by the
//! number produced) and the groups' lag until they are back to zero.

use std::io::Write;

use chrono::SecondsFormat;

use crate::replay;

/// `slackline backfill`'s flags: those of `replay`.
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    /// The range, filters, archive and Kafka (as `slackline replay`).
    #[command(flatten)]
    pub replay: replay::Args,
}

/// `slackline backfill`: says what it does, replays, says what to watch.
///
/// # Errors
///
/// As [`replay::run_replay`]: the replay could not run or was not acknowledged
/// completely (the message says how to resume).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let args = args.replay;
    let options = args.options();
    let time = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
    {
        let mut err = std::io::stderr().lock();
        writeln!(
            err,
            "backfill [{}, {}) from {} onto {}{} with replay id {}{}",
            time(&options.from),
            time(&options.to),
            args.archive_url,
            options.topic,
            filters(&options),
            options.replay_id,
            if options.dry_run {
                " (dry run: nothing is produced)"
            } else {
                ""
            },
        )?;
        writeln!(
            err,
            "nothing needs to stop: the running normalizer normalizes replayed records again and \
             the groups skip effects already done (fact keys); deploy the fix before backfilling"
        )?;
    }
    let summary = replay::run_replay(&args, &options).await?;
    if !options.dry_run {
        let mut err = std::io::stderr().lock();
        writeln!(
            err,
            "backfill done: {} records acknowledged on {}. Follow \
             slackline_normalizer_replayed_total (it rises by {}) and the lag of the groups \
             normalizer, thread-state, timeline-writer, notifier until it is 0; \
             `slackline tail {}` shows the records with header slackline-replay={}",
            summary.acknowledged,
            options.topic,
            summary.acknowledged,
            options.topic,
            summary.replay_id,
        )?;
    }
    Ok(())
}

fn filters(options: &replay::ReplayOptions) -> String {
    let mut out = String::new();
    if !options.channels.is_empty() {
        out.push_str(&format!(", channels {}", options.channels.join(",")));
    }
    if let Some(team) = &options.team {
        out.push_str(&format!(", team {team}"));
    }
    if !options.event_types.is_empty() {
        out.push_str(&format!(", event types {}", options.event_types.join(",")));
    }
    if let Some(rate) = options.rate {
        out.push_str(&format!(", at most {rate} events/s"));
    }
    out
}
