//! `slackline send`: sign JSON bodies the Slack way and post them to an edge.
//!
//! Bare inner events (`{"type":"message",...}`, as SDK fixtures often are) are wrapped
//! in an `event_callback` envelope with a fresh event id, unless `raw` is set.

use std::path::{Path, PathBuf};

use slackline_slack::{is_bare_event, sign, wrap_bare_event};

/// `slackline send`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Files or directories of .json bodies.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The edge's URL.
    #[arg(long, default_value = "http://127.0.0.1:3000/slack/events")]
    pub url: String,
    /// Signing secret (the first of a comma-separated list is used).
    #[arg(long, env = "SLACK_SIGNING_SECRETS", default_value = crate::dev::DEV_SECRET, hide_env_values = true)]
    pub secret: String,
    /// Send as Slack's retry number N (adds X-Slack-Retry-Num).
    #[arg(long)]
    pub retry_num: Option<u32>,
    /// Post files as they are (do not wrap bare inner events in an envelope).
    #[arg(long)]
    pub raw: bool,
}

/// `slackline send`: posts every file, prints one line per file and a summary.
///
/// # Errors
///
/// No secret, a path cannot be read, or a body was not answered 200 (after every
/// file was sent and printed).
pub async fn run(args: Args) -> anyhow::Result<()> {
    let secret = args
        .secret
        .split(',')
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or_default()
        .to_owned();
    if secret.is_empty() {
        anyhow::bail!("--secret / SLACK_SIGNING_SECRETS is empty");
    }
    let files = collect_files(&args.paths)?;
    let options = SendOptions {
        url: args.url,
        secret,
        retry_num: args.retry_num,
        raw: args.raw,
    };
    let results = send_files(&files, &options).await?;
    for r in &results {
        let status = r.status.map_or_else(|| "ERR".to_owned(), |s| s.to_string());
        let note = if r.wrapped {
            " (wrapped in an envelope)"
        } else {
            ""
        };
        let error = r
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        println!("{status} {}{note}{error}", r.path.display());
    }
    println!("{}", summary(&results));
    let failed = results.iter().filter(|r| r.status != Some(200)).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} bodies were not answered 200", results.len());
    }
    Ok(())
}

/// What `send` needs.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The edge's `/slack/events` URL.
    pub url: String,
    /// The signing secret.
    pub secret: String,
    /// `X-Slack-Retry-Num` to send (simulates Slack's retries).
    pub retry_num: Option<u32>,
    /// Post bodies exactly as they are in the files.
    pub raw: bool,
}

/// The outcome for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The file.
    pub path: PathBuf,
    /// HTTP status, or `None` when the request failed before a response.
    pub status: Option<u16>,
    /// Whether the body was wrapped in an envelope.
    pub wrapped: bool,
    /// The error, when there was no response.
    pub error: Option<String>,
}

/// Errors before anything is sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// A path could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Every `.json` file named, directories expanded recursively, in sorted order.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, SendError> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files)?;
    }
    Ok(files)
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> Result<(), SendError> {
    let read_err = |source| SendError::Read {
        path: path.display().to_string(),
        source,
    };
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(read_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            if entry.is_dir() || entry.extension().is_some_and(|e| e == "json") {
                collect(&entry, files)?;
            }
        }
    } else {
        std::fs::metadata(path).map_err(read_err)?;
        files.push(path.to_path_buf());
    }
    Ok(())
}

/// The body to post for a file's bytes: wrapped when it is a bare inner event.
pub fn body_for(bytes: Vec<u8>, raw: bool, event_id: &str) -> (Vec<u8>, bool) {
    if raw {
        return (bytes, false);
    }
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(value) if is_bare_event(&value) => {
            let wrapped = wrap_bare_event(value, event_id, "T0SLACKLINE");
            match serde_json::to_vec(&wrapped) {
                Ok(body) => (body, true),
                Err(_) => (bytes, false),
            }
        }
        _ => (bytes, false),
    }
}

/// Signs and posts each file, one after another (so that one channel's events arrive
/// in file order, as Slack would send them).
pub async fn send_files(files: &[PathBuf], options: &SendOptions) -> Result<Vec<Sent>, SendError> {
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let run = chrono::Utc::now().timestamp_micros();
    let mut results = Vec::with_capacity(files.len());
    for (i, path) in files.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|source| SendError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let (body, wrapped) = body_for(bytes, options.raw, &format!("EvSEND{run}{i:05}"));
        let (status, error) = match send_body(
            &http,
            &options.url,
            &options.secret,
            body,
            options.retry_num,
        )
        .await
        {
            Ok(status) => (Some(status), None),
            Err(e) => (None, Some(e.to_string())),
        };
        results.push(Sent {
            path: path.clone(),
            status,
            wrapped,
            error,
        });
    }
    Ok(results)
}

/// Signs `body` with `secret` (timestamp now) and posts it to `url` as Slack would,
/// as retry number `retry_num` when given; returns the HTTP status.
///
/// # Errors
///
/// When the request could not be sent or answered.
pub async fn send_body(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    body: Vec<u8>,
    retry_num: Option<u32>,
) -> Result<u16, reqwest::Error> {
    let ts = chrono::Utc::now().timestamp();
    let mut request = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-slack-request-timestamp", ts.to_string())
        .header("x-slack-signature", sign(secret, ts, &body))
        .body(body);
    if let Some(n) = retry_num {
        request = request
            .header("x-slack-retry-num", n.to_string())
            .header("x-slack-retry-reason", "http_timeout");
    }
    Ok(request.send().await?.status().as_u16())
}

/// `sent N: 200 x a, 503 x b, failed x c`.
pub fn summary(results: &[Sent]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for r in results {
        let label = r
            .status
            .map_or_else(|| "failed".to_owned(), |s| s.to_string());
        *counts.entry(label).or_insert(0usize) += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} x {v}")).collect();
    format!("sent {}: {}", results.len(), parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_events_are_wrapped_unless_raw() {
        let bare = br#"{"type":"message","channel":"C1","ts":"1.1"}"#.to_vec();
        let (body, wrapped) = body_for(bare.clone(), false, "Ev1");
        assert!(wrapped);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["type"], "event_callback");
        assert_eq!(v["event"]["channel"], "C1");
        assert_eq!(body_for(bare.clone(), true, "Ev1"), (bare, false));
        let not_json = b"nope".to_vec();
        assert_eq!(body_for(not_json.clone(), false, "Ev1"), (not_json, false));
    }

    #[test]
    fn directories_expand_to_sorted_json_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for name in ["b.json", "a.json", "notes.txt", "sub/c.json"] {
            std::fs::write(dir.path().join(name), b"{}").unwrap();
        }
        let files = collect_files(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec!["a.json", "b.json", "sub/c.json"]);
        assert!(collect_files(&[dir.path().join("missing.json")]).is_err());
    }

    #[test]
    fn summary_counts_statuses() {
        let r = |status| Sent {
            path: PathBuf::from("x"),
            status,
            wrapped: false,
            error: None,
        };
        assert_eq!(
            summary(&[r(Some(200)), r(Some(200)), r(None)]),
            "sent 3: 200 x 2, failed x 1"
        );
    }
}
