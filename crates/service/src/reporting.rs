//! Sentry, the last line of defence: with `SENTRY_DSN` set, every service reports
//! every error-level log event (each DLQ record is one: [`DLQ_MESSAGE`]) through
//! the `sentry` crate's `tracing` integration, and every panic from the panic hook
//! of [`crate::init_telemetry`]. Unset or empty, none of this runs: no client, no
//! layer, nothing reported from the panic hook.
//!
//! **Not reported**: events of the `log` bridge (every `log` record, librdkafka's
//! among them: during a broker outage it logs an error per connection attempt, with
//! host names in the text) and events whose target is `rdkafka` or `librdkafka` (or
//! under them): see [`UNREPORTED_TARGETS`]. They stay in the logs.
//!
//! **What a report carries, and what it never does.** Log lines can quote Slack
//! messages (an error text that includes a payload, a field holding a message), and
//! some settings hold secrets, so a report is rebuilt from an allow list by
//! `scrub` (the client's `before_send`) rather than filtered by a deny list:
//!
//! - tags [`TAGS`]: `service`, and from the event's fields and the fields of the spans
//!   it happened in: `event_id`, `channel`, `archive_key`, `topic`, `partition`,
//!   `offset`, `group` (the consumer runtime's span names the record key `key`: on
//!   slackline topics it is the channel id, so it becomes `channel` when the event has
//!   no `channel` of its own). Values are clipped to 200 characters;
//! - the log line's message as rendered (an event without a message is reported as
//!   [`NO_MESSAGE`], never with the `error` field that `sentry-tracing` would use
//!   instead). Only a convention keeps Slack text and secrets out of it: **an
//!   error-level message must be a literal, its values going in fields**
//!   (`tracing::error!(error = %e, "cannot store the event")`, never
//!   `tracing::error!("cannot store the event: {e}")`). The layer cannot tell the two
//!   apart: `tracing` hands the message over as `&dyn Debug`, so
//!   `fmt::Arguments::as_str` is out of reach;
//! - the numbers [`NUMBER_EXTRAS`] (`attempts`, `dlq_partition`, `dlq_offset`, ...), as
//!   extra data;
//! - the code location (module, file, line) and, for an error passed as
//!   `&dyn Error`, the error's type; a panic's location (`panicked at file:line:col`)
//!   and stack trace (function names);
//! - level, release (`SENTRY_RELEASE`, default `<service>@<version>`), environment
//!   (`SENTRY_ENVIRONMENT`, default `production`), timestamp.
//!
//! Everything else is dropped: other fields (an `error` or `reason` text above all),
//! error and panic message texts, user, request, server name, breadcrumbs (none are
//! recorded: `max_breadcrumbs` is 0, since info and warn lines would carry their
//! fields along). `SENTRY_INCLUDE_ERROR_TEXT=true` adds the texts back, clipped to
//! 1 KiB: the `error` and `reason` fields, error values, panic messages; leave it off
//! unless Slack message text may go to Sentry.
//!
//! Reports follow the log filter: a `RUST_LOG` that silences error lines silences
//! their reports too (panics are reported regardless).
//!
//! Reports go out from a queue on a thread of their own (module `transport`): DLQ
//! reports on a lane of their own that other reports cannot fill, sent first;
//! Sentry's rate limits honoured (other reports dropped while one is in force);
//! dropped reports counted by reason ([`dropped_reports`], logged by
//! [`crate::run_service`] when the service stops). Nothing waits for a report when it
//! is made, a panic's included: [`crate::run_service`] flushes the queue, bounded by
//! [`FLUSH_BUDGET`], after the service's last log line (so a DLQ record written just
//! before SIGTERM still reaches Sentry), and the shutdown watchdog before it exits.

mod transport;

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use sentry::integrations::tracing::ErrorLayer;
use sentry::protocol::{Context as SentryContext, Event, Exception, Level, Mechanism, Value};
use sentry::types::Dsn;
use sentry::ClientOptions;
use tracing::field::{Field, Visit};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::env::Env;

/// How long a flush of pending reports may take: at the end of [`crate::run_service`]
/// and in the watchdog before it exits (never after a panic: the panicking thread
/// goes on at once). Part of [`crate::shutdown::STOP_MARGIN`]; one request's timeout
/// is shorter, so a request under way when the flush starts can end within it.
pub const FLUSH_BUDGET: Duration = Duration::from_secs(1);

/// The message of the log line of a DLQ record (the consumer runtime's and the
/// normalizer's): its reports are never dropped to make room for others.
pub const DLQ_MESSAGE: &str = "record sent to the DLQ";

/// Targets whose events are never reported (the target itself and those under it,
/// `rdkafka::client` say). `log` is the target of every event the `log` bridge
/// (`tracing-log`) makes, whatever the `log` record's own target was.
pub const UNREPORTED_TARGETS: [&str; 3] = ["log", "rdkafka", "librdkafka"];

/// The tags a report may carry (`service` is set from the service's name).
pub const TAGS: [&str; 8] = [
    "service",
    "event_id",
    "channel",
    "archive_key",
    "topic",
    "partition",
    "offset",
    "group",
];

/// Number and boolean fields kept as extra data.
pub const NUMBER_EXTRAS: [&str; 5] = [
    "attempts",
    "dlq_partition",
    "dlq_offset",
    "payload_omitted",
    "exit_code",
];

/// Text fields kept (clipped) only with `SENTRY_INCLUDE_ERROR_TEXT=true`.
pub const TEXT_EXTRAS: [&str; 2] = ["error", "reason"];

/// The message of a report whose log line had none.
pub const NO_MESSAGE: &str = "error-level log event without a message";

/// The target of the log line the panic hook writes: not reported as an error event
/// (the hook reports the panic itself, with [`report_panic`]).
pub(crate) const PANIC_LOG_TARGET: &str = "slackline_service::panic";

const TAG_MAX: usize = 200;
const MESSAGE_MAX: usize = 1024;
const TEXT_MAX: usize = 1024;
/// A scope marker for [`scrub`]: the log line had no message field.
const NO_MESSAGE_MARKER: &str = "slackline.no_message";
const FIELDS_CONTEXT: &str = "Rust Tracing Fields";
const LOCATION_CONTEXT: &str = "Rust Tracing Location";

/// Sentry settings from the environment (see the README's configuration table).
#[derive(Clone)]
pub struct SentrySettings {
    /// `SENTRY_DSN`.
    pub dsn: Dsn,
    /// `SENTRY_ENVIRONMENT`, default `production`.
    pub environment: String,
    /// `SENTRY_RELEASE`; `None`: `<service>@<version>`.
    pub release: Option<String>,
    /// `SENTRY_INCLUDE_ERROR_TEXT`: keep error texts and panic messages (default off).
    pub include_error_text: bool,
}

impl std::fmt::Debug for SentrySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The DSN's key stays out of logs.
        f.debug_struct("SentrySettings")
            .field("host", &self.dsn.host())
            .field("project_id", &self.dsn.project_id().to_string())
            .field("environment", &self.environment)
            .field("release", &self.release)
            .field("include_error_text", &self.include_error_text)
            .finish()
    }
}

impl SentrySettings {
    /// The settings, or `None` when `SENTRY_DSN` is unset or empty (reporting off). A
    /// DSN that does not parse is recorded as a problem in `env`.
    pub fn from_env(env: &mut Env) -> Option<SentrySettings> {
        let raw = env.get("SENTRY_DSN")?.trim().to_owned();
        let include_error_text = env.bool_or("SENTRY_INCLUDE_ERROR_TEXT", false);
        let environment = env.string_or("SENTRY_ENVIRONMENT", "production");
        let release = env.get("SENTRY_RELEASE").map(str::to_owned);
        match raw.parse::<Dsn>() {
            Ok(dsn) => Some(SentrySettings {
                dsn,
                environment,
                release,
                include_error_text,
            }),
            Err(e) => {
                env.problem("SENTRY_DSN", format!("not a Sentry DSN: {e}"));
                None
            }
        }
    }
}

static CLIENT: OnceLock<sentry::ClientInitGuard> = OnceLock::new();

/// Whether reports are being sent (Sentry was started in this process).
pub fn enabled() -> bool {
    CLIENT.get().is_some()
}

/// Waits until the reports made so far are sent (panic reports whose stack is still
/// being resolved included), at most `timeout`; `true` when they were (or reporting
/// is off).
pub fn flush(timeout: Duration) -> bool {
    let Some(client) = CLIENT.get() else {
        return true;
    };
    let deadline = Instant::now() + timeout;
    let panics_done = PANICS.get().is_none_or(|panics| panics.wait(deadline));
    let left = deadline.saturating_duration_since(Instant::now());
    client.flush(Some(left)) && panics_done
}

/// The name of the thread that resolves panics' stacks and reports them.
const PANIC_THREAD_NAME: &str = "slackline-sentry-panics";

/// Panic reports on their way to the `slackline-sentry-panics` thread, which
/// resolves their stacks (symbolication can take a second in a binary with debug
/// info: not on the panicking thread) and hands them to the client.
struct PanicQueue {
    tx: mpsc::Sender<PanicReport>,
    /// Reports sent to the thread and not yet handed to the client.
    pending: Mutex<usize>,
    done: Condvar,
}

struct PanicReport {
    hub: Arc<sentry::Hub>,
    event: Event<'static>,
    backtrace: std::backtrace::Backtrace,
}

static PANICS: OnceLock<PanicQueue> = OnceLock::new();

impl PanicQueue {
    fn start() -> Option<PanicQueue> {
        let (tx, rx) = mpsc::channel::<PanicReport>();
        let spawned = std::thread::Builder::new()
            .name(PANIC_THREAD_NAME.to_owned())
            .spawn(move || {
                while let Ok(report) = rx.recv() {
                    let PanicReport {
                        hub,
                        mut event,
                        backtrace,
                    } = report;
                    let stacktrace =
                        sentry::integrations::backtrace::parse_stacktrace(&backtrace.to_string());
                    if let Some(exception) = event.exception.values.first_mut() {
                        exception.stacktrace = stacktrace;
                    }
                    hub.capture_event(event);
                    if let Some(panics) = PANICS.get() {
                        panics.finished();
                    }
                }
            });
        match spawned {
            Ok(_) => Some(PanicQueue {
                tx,
                pending: Mutex::new(0),
                done: Condvar::new(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the Sentry panic reporter: panics will not be reported");
                None
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn send(&self, report: PanicReport) {
        *self.lock() += 1;
        if self.tx.send(report).is_err() {
            self.finished();
        }
    }

    fn finished(&self) {
        let mut pending = self.lock();
        *pending = pending.saturating_sub(1);
        drop(pending);
        self.done.notify_all();
    }

    /// Waits until no report is pending, at most until `deadline`.
    fn wait(&self, deadline: Instant) -> bool {
        let mut pending = self.lock();
        while *pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            pending = match self.done.wait_timeout(pending, left) {
                Ok((pending, _)) => pending,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }
}

/// Reports dropped so far in this process, by reason: `queue_full`, `rate_limited`
/// (Sentry's rate limit in force, or a 429), `send_failed` (the request failed or
/// Sentry refused the report).
pub fn dropped_reports() -> Vec<(&'static str, u64)> {
    transport::dropped()
        .into_iter()
        .map(|(reason, n)| (reason.as_str(), n))
        .collect()
}

/// Logs [`dropped_reports`] at `warn` when any was dropped (the end of a service).
pub(crate) fn log_dropped(service: &'static str) {
    let counts = dropped_reports();
    if counts.iter().any(|(_, n)| *n > 0) {
        let count = |reason: &str| {
            counts
                .iter()
                .find(|(r, _)| *r == reason)
                .map_or(0, |(_, n)| *n)
        };
        tracing::warn!(
            service,
            queue_full = count("queue_full"),
            rate_limited = count("rate_limited"),
            send_failed = count("send_failed"),
            "Sentry reports dropped"
        );
    }
}

static INCLUDE_TEXT: OnceLock<bool> = OnceLock::new();

/// Reports a panic (from the panic hook of [`crate::init_telemetry`]): captures the
/// stack unresolved and hands the report to the `slackline-sentry-panics` thread;
/// returns at once, never waiting for the report to be resolved or sent.
pub(crate) fn report_panic(info: &std::panic::PanicHookInfo<'_>) {
    let Some(panics) = PANICS.get() else {
        return;
    };
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>");
    let include_text = INCLUDE_TEXT.get().copied().unwrap_or(false);
    panics.send(PanicReport {
        hub: sentry::Hub::current(),
        event: panic_event(info.location(), message, include_text),
        backtrace: std::backtrace::Backtrace::force_capture(),
    });
}

/// Starts the Sentry client (once per process), without integrations: panics are
/// reported by [`report_panic`]. Called by [`crate::init_telemetry`] after it
/// installed the subscriber with [`layer`].
pub(crate) fn start(service: &'static str, settings: SentrySettings) {
    let include_text = settings.include_error_text;
    let _ = INCLUDE_TEXT.set(include_text);
    let release = settings
        .release
        .unwrap_or_else(|| format!("{service}@{}", env!("CARGO_PKG_VERSION")));
    // `ClientOptions` is non-exhaustive: set field by field.
    let mut options = ClientOptions::default();
    options.dsn = Some(settings.dsn);
    options.release = Some(release.into());
    options.environment = Some(settings.environment.into());
    options.send_default_pii = false;
    options.max_breadcrumbs = 0;
    options.attach_stacktrace = false;
    options.default_integrations = false;
    options.integrations = Vec::new();
    options.before_send = Some(Arc::new(move |event| {
        Some(scrub(event, service, include_text))
    }));
    options.before_breadcrumb = Some(Arc::new(|_| None));
    options.transport = Some(Arc::new(transport::HttpTransportFactory));
    options.shutdown_timeout = FLUSH_BUDGET;
    let _ = CLIENT.set(sentry::init(options));
    if let Some(panics) = PanicQueue::start() {
        let _ = PANICS.set(panics);
    }
}

/// The `tracing` layer that turns error-level events into reports (see the module
/// docs); add it to the subscriber only when Sentry is configured.
pub(crate) fn layer() -> ReportLayer {
    ReportLayer {
        errors: ErrorLayer::new(),
    }
}

/// `sentry-tracing`'s [`ErrorLayer`] for error-level events, with the allow-listed
/// fields of the event and of its spans put on the report's scope as tags.
pub(crate) struct ReportLayer {
    errors: ErrorLayer,
}

impl<S> Layer<S> for ReportLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        if !attrs
            .metadata()
            .fields()
            .iter()
            .any(|f| tag_name(f.name()).is_some())
        {
            return;
        }
        let mut tags = Tags::default();
        attrs.record(&mut TagVisitor(&mut tags));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(tags);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        if let Some(tags) = extensions.get_mut::<Tags>() {
            values.record(&mut TagVisitor(tags));
        } else {
            let mut tags = Tags::default();
            values.record(&mut TagVisitor(&mut tags));
            if !tags.is_empty() {
                extensions.insert(tags);
            }
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() != tracing::Level::ERROR
            || meta.target() == PANIC_LOG_TARGET
            || unreported(meta)
            || std::thread::current().name() == Some(transport::THREAD_NAME)
        {
            return;
        }
        let mut tags = Tags::default();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(span_tags) = span.extensions().get::<Tags>() {
                    tags.merge(span_tags);
                }
            }
        }
        event.record(&mut TagVisitor(&mut tags));
        let has_message = meta.fields().field("message").is_some();
        sentry::with_scope(
            |scope| {
                for (name, value) in tags.finish() {
                    scope.set_tag(name, value);
                }
                if !has_message {
                    scope.set_extra(NO_MESSAGE_MARKER, Value::Bool(true));
                }
            },
            || Layer::<S>::on_event(&self.errors, event, ctx),
        );
    }
}

/// Whether an event comes from the `log` bridge or a target of
/// [`UNREPORTED_TARGETS`].
fn unreported(meta: &tracing::Metadata<'_>) -> bool {
    let target = meta.target();
    // `tracing-log` events carry the `log` record's target in this field.
    meta.fields().field("log.target").is_some()
        || UNREPORTED_TARGETS.iter().any(|t| {
            target
                .strip_prefix(t)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

/// The allow-listed fields of a span or an event, by tag name.
#[derive(Debug, Default, Clone)]
struct Tags {
    values: BTreeMap<&'static str, String>,
    /// A `key` field: the channel when nothing names it `channel`.
    key: Option<String>,
}

impl Tags {
    fn is_empty(&self) -> bool {
        self.values.is_empty() && self.key.is_none()
    }

    /// `inner` (a span nested deeper, or the event) wins.
    fn merge(&mut self, inner: &Tags) {
        for (name, value) in &inner.values {
            self.values.insert(name, value.clone());
        }
        if inner.key.is_some() {
            self.key.clone_from(&inner.key);
        }
    }

    fn finish(mut self) -> BTreeMap<&'static str, String> {
        if let Some(key) = self.key {
            self.values.entry("channel").or_insert(key);
        }
        self.values
    }

    fn record(&mut self, field: &str, value: String) {
        let value = tag_value(&value);
        if value.is_empty() || value == "-" {
            return;
        }
        match tag_name(field) {
            Some(TagName::Tag(name)) => {
                self.values.insert(name, value);
            }
            Some(TagName::Key) => self.key = Some(value),
            None => {}
        }
    }
}

enum TagName {
    Tag(&'static str),
    Key,
}

fn tag_name(field: &str) -> Option<TagName> {
    if field == "key" {
        return Some(TagName::Key);
    }
    // `service` is set from the service's name, not from fields.
    TAGS.iter()
        .skip(1)
        .find(|t| **t == field)
        .copied()
        .map(TagName::Tag)
}

struct TagVisitor<'a>(&'a mut Tags);

impl Visit for TagVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if tag_name(field.name()).is_some() {
            self.0.record(field.name(), value.to_owned());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if tag_name(field.name()).is_some() {
            self.0.record(field.name(), value.to_string());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if tag_name(field.name()).is_some() {
            self.0.record(field.name(), value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if tag_name(field.name()).is_some() {
            self.0.record(field.name(), format!("{value:?}"));
        }
    }
}

/// A tag value: one line, at most [`TAG_MAX`] characters.
fn tag_value(raw: &str) -> String {
    let one_line: String = raw
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    clip(one_line.trim(), TAG_MAX)
}

fn clip(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// The report of a panic, but its stack: where it happened, the tags of the spans
/// it happened in; the panic's message only with `include_text`.
fn panic_event(
    location: Option<&std::panic::Location<'_>>,
    message: &str,
    include_text: bool,
) -> Event<'static> {
    let at = location.map_or_else(
        || "an unknown location".to_owned(),
        |l| format!("{}:{}:{}", l.file(), l.line(), l.column()),
    );
    let value = if include_text {
        format!("panicked at {at}: {}", clip(message, TEXT_MAX))
    } else {
        format!("panicked at {at}")
    };
    let tags = current_span_tags()
        .finish()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    Event {
        exception: vec![Exception {
            ty: "panic".into(),
            value: Some(value),
            mechanism: Some(Mechanism {
                ty: "panic".into(),
                handled: Some(false),
                ..Mechanism::default()
            }),
            // Filled in by the `slackline-sentry-panics` thread.
            stacktrace: None,
            ..Exception::default()
        }]
        .into(),
        level: Level::Fatal,
        tags,
        ..Event::default()
    }
}

/// The tags of the spans the current thread is in (for a panic's report).
fn current_span_tags() -> Tags {
    let mut tags = Tags::default();
    tracing::dispatcher::get_default(|dispatch| {
        let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>() else {
            return;
        };
        let current = dispatch.current_span();
        let Some(span) = current.id().and_then(|id| registry.span(id)) else {
            return;
        };
        for span in span.scope().from_root() {
            if let Some(span_tags) = span.extensions().get::<Tags>() {
                tags.merge(span_tags);
            }
        }
    });
    tags
}

/// The client's `before_send`: the report rebuilt from what the module docs allow.
pub(crate) fn scrub(event: Event<'static>, service: &str, include_text: bool) -> Event<'static> {
    let Event {
        event_id,
        level,
        message,
        logger,
        platform,
        timestamp,
        release,
        environment,
        mut contexts,
        exception,
        tags,
        extra,
        sdk,
        ..
    } = event;
    let fields = match contexts.remove(FIELDS_CONTEXT) {
        Some(SentryContext::Other(fields)) => fields,
        _ => BTreeMap::new(),
    };
    let message = if extra.contains_key(NO_MESSAGE_MARKER) {
        Some(NO_MESSAGE.to_owned())
    } else {
        message.map(|m| clip(&m, MESSAGE_MAX))
    };
    let mut kept_tags: BTreeMap<String, String> = tags
        .into_iter()
        .filter(|(name, _)| TAGS.contains(&name.as_str()))
        .map(|(name, value)| (name, tag_value(&value)))
        .collect();
    kept_tags.insert("service".to_owned(), service.to_owned());
    let mut kept_extra = BTreeMap::new();
    for (name, value) in fields {
        let keep = match &value {
            Value::Number(_) | Value::Bool(_) => NUMBER_EXTRAS.contains(&name.as_str()),
            Value::String(_) => include_text && TEXT_EXTRAS.contains(&name.as_str()),
            _ => false,
        };
        if keep {
            let value = match value {
                Value::String(text) => Value::String(clip(&text, TEXT_MAX)),
                other => other,
            };
            kept_extra.insert(name, value);
        }
    }
    let kept_contexts = contexts
        .remove(LOCATION_CONTEXT)
        .map(|location| (LOCATION_CONTEXT.to_owned(), location))
        .into_iter()
        .collect();
    let exception: Vec<Exception> = exception
        .values
        .into_iter()
        .map(|e| {
            let ours = e.mechanism.as_ref().is_some_and(|m| m.ty == "panic");
            Exception {
                value: if ours || include_text {
                    e.value.map(|v| clip(&v, TEXT_MAX))
                } else {
                    None
                },
                mechanism: e.mechanism.map(|m| Mechanism {
                    ty: m.ty,
                    handled: m.handled,
                    synthetic: m.synthetic,
                    ..Mechanism::default()
                }),
                ty: e.ty,
                module: e.module,
                stacktrace: e.stacktrace,
                raw_stacktrace: e.raw_stacktrace,
                thread_id: e.thread_id,
            }
        })
        .collect();
    Event {
        event_id,
        level,
        message,
        logger,
        platform,
        timestamp,
        release,
        environment,
        contexts: kept_contexts,
        exception: exception.into(),
        tags: kept_tags,
        extra: kept_extra,
        sdk,
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_off_when_unset_or_empty_and_a_bad_dsn_is_a_problem() {
        let mut env = Env::from_pairs([("SENTRY_DSN", "")]);
        assert!(SentrySettings::from_env(&mut env).is_none());
        assert!(env.finish().is_ok());
        let mut env = Env::from_pairs([("OTHER", "x")]);
        assert!(SentrySettings::from_env(&mut env).is_none());
        assert!(env.finish().is_ok());
        let mut env = Env::from_pairs([("SENTRY_DSN", "not a dsn")]);
        assert!(SentrySettings::from_env(&mut env).is_none());
        let problems = env.finish().unwrap_err().problems;
        assert!(problems[0].starts_with("SENTRY_DSN"), "{problems:?}");
        let mut env = Env::from_pairs([
            ("SENTRY_DSN", "https://public@sentry.example/42"),
            ("SENTRY_ENVIRONMENT", "staging"),
        ]);
        let s = SentrySettings::from_env(&mut env).expect("a valid DSN");
        assert_eq!(s.environment, "staging");
        assert!(!s.include_error_text);
        assert!(!format!("{s:?}").contains("public"), "{s:?}");
    }

    #[test]
    fn scrub_keeps_only_the_allow_list() {
        let mut fields = BTreeMap::new();
        fields.insert("error".to_owned(), Value::from("hunter2 in the text"));
        fields.insert("text".to_owned(), Value::from("a customer message"));
        fields.insert("attempts".to_owned(), Value::from(3));
        let mut contexts = BTreeMap::new();
        contexts.insert(FIELDS_CONTEXT.to_owned(), SentryContext::Other(fields));
        let mut tags = BTreeMap::new();
        tags.insert("channel".to_owned(), "C1\nC2".to_owned());
        tags.insert("password".to_owned(), "hunter2".to_owned());
        let event = Event {
            message: Some("record sent to the DLQ".into()),
            contexts,
            tags,
            exception: vec![Exception {
                ty: "io::Error".into(),
                value: Some("hunter2".into()),
                ..Exception::default()
            }]
            .into(),
            server_name: Some("pod-1".into()),
            ..Event::default()
        };
        let out = scrub(event.clone(), "svc", false);
        let json = serde_json::to_string(&out).expect("serialises");
        assert!(!json.contains("hunter2"), "{json}");
        assert!(!json.contains("customer message"), "{json}");
        assert!(!json.contains("pod-1"), "{json}");
        assert_eq!(out.tags["channel"], "C1 C2");
        assert_eq!(out.tags["service"], "svc");
        assert_eq!(out.extra["attempts"], Value::from(3));
        assert_eq!(out.exception.values[0].ty, "io::Error");
        let with_text = scrub(event, "svc", true);
        assert_eq!(with_text.extra["error"], Value::from("hunter2 in the text"));
        assert!(!with_text.extra.contains_key("text"));
    }
}
