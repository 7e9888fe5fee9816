//! `POST /slack/events`: verify, archive, produce, and only then answer 200.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use slackline_archive::{Archive, ArchiveRecord};
use slackline_kafka::headers;
use slackline_slack::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use slackline_slack::{inspect, EnvelopeInfo, EnvelopeKind, SignatureError, SigningSecrets};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::Limits;
use crate::metrics::EdgeMetrics;
use crate::throttle::{Throttle, WARN_EVERY};

/// Slack's retry headers.
const RETRY_NUM_HEADER: &str = "x-slack-retry-num";
const RETRY_REASON_HEADER: &str = "x-slack-retry-reason";
/// Request headers kept in the archive record.
const ARCHIVED_HEADERS: [&str; 6] = [
    TIMESTAMP_HEADER,
    SIGNATURE_HEADER,
    RETRY_NUM_HEADER,
    RETRY_REASON_HEADER,
    "content-type",
    "user-agent",
];

/// `Retry-After` on the 503 answered when too many requests are in flight.
const OVERLOADED_RETRY_AFTER_SECS: &str = "1";

/// What the handler shares across requests.
pub(crate) struct EdgeState {
    secrets: SigningSecrets,
    archive: Archive,
    producer: FutureProducer,
    raw_topic: String,
    /// From the request's headers to its answer, reading the body included.
    deadline: Duration,
    /// From the request's headers to its body's last byte (never past `deadline`).
    body_read_timeout: Duration,
    /// One permit per request in flight (`EDGE_MAX_IN_FLIGHT`).
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    metrics: EdgeMetrics,
    /// Throttled warnings: 401s, requests over the in-flight limit, slow bodies.
    refused: Throttle,
    overloaded: Throttle,
    slow_bodies: Throttle,
}

impl EdgeState {
    pub(crate) fn new(
        secrets: SigningSecrets,
        archive: Archive,
        producer: FutureProducer,
        raw_topic: String,
        deadline: Duration,
        limits: &Limits,
        metrics: EdgeMetrics,
    ) -> EdgeState {
        EdgeState {
            secrets,
            archive,
            producer,
            raw_topic,
            deadline,
            body_read_timeout: limits.body_read_timeout.min(deadline),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            max_in_flight: limits.max_in_flight,
            metrics,
            refused: Throttle::new(WARN_EVERY),
            overloaded: Throttle::new(WARN_EVERY),
            slow_bodies: Throttle::new(WARN_EVERY),
        }
    }
}

/// Why a request was not accepted. Client errors are expected and logged quietly;
/// internal ones answer a generic body (Slack will retry) and are logged as errors.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EdgeError {
    #[error("invalid signature: {0}")]
    Signature(#[from] SignatureError),
    #[error("archive write failed: {0}")]
    Archive(#[from] slackline_archive::ArchiveError),
    #[error("kafka delivery failed: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("kafka delivery was cancelled (producer shutting down)")]
    KafkaCancelled,
    #[error("archive and delivery did not finish within the deadline")]
    Deadline,
    #[error("the request body did not arrive within the body read timeout")]
    BodyTimeout,
}

impl IntoResponse for EdgeError {
    fn into_response(self) -> Response {
        match self {
            EdgeError::Signature(_) => {
                (StatusCode::UNAUTHORIZED, "invalid signature").into_response()
            }
            // The client's fault; the rest of its body may still be on the way, so
            // the connection cannot carry another request.
            EdgeError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONNECTION, "close")],
                "request body not received in time",
            )
                .into_response(),
            // Everything else is ours: 503 so that Slack retries the delivery.
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily unavailable, retry",
            )
                .into_response(),
        }
    }
}

/// Counts every response on the Slack route by status, with its latency.
pub(crate) async fn count_responses(
    State(state): State<Arc<EdgeState>>,
    request: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .responded(response.status().as_u16(), start.elapsed().as_secs_f64());
    response
}

/// Answers 503 with `Retry-After` at once, without reading the body, when
/// `EDGE_MAX_IN_FLIGHT` requests are already being handled: Slack retries, and an
/// overloaded edge sheds load instead of queueing requests past Slack's 3 s.
pub(crate) async fn limit_in_flight(
    State(state): State<Arc<EdgeState>>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        state.metrics.overloaded();
        tracing::debug!("answering 503: too many requests in flight");
        if let Some(count) = state.overloaded.hit() {
            tracing::warn!(
                overloaded = count,
                max_in_flight = state.max_in_flight,
                "answered 503 to requests over EDGE_MAX_IN_FLIGHT (count since the last such warning)"
            );
        }
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, OVERLOADED_RETRY_AFTER_SECS)],
            "overloaded, retry",
        )
            .into_response();
    };
    let _counted = state.metrics.request_started();
    next.run(request).await
}

/// The deadline counts from here, when the headers are in: reading the body is part
/// of it, so a client trickling its body cannot hold a request (and its in-flight
/// permit) past `EDGE_BODY_READ_TIMEOUT_MS`. A body not in by then gets 408.
pub(crate) async fn slack_events(
    State(state): State<Arc<EdgeState>>,
    request: Request,
) -> Result<Response, EdgeError> {
    let headers_at = tokio::time::Instant::now();
    let request_headers = request.headers().clone();
    // `Bytes` honours `EDGE_MAX_BODY_BYTES` (413) like the extractor did.
    let body = match tokio::time::timeout(
        state.body_read_timeout,
        Bytes::from_request(request, &()),
    )
    .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(rejection)) => return Ok(rejection.into_response()),
        Err(_) => {
            state.metrics.read_timed_out("body");
            tracing::debug!("answering 408: request body not complete in time");
            if let Some(count) = state.slow_bodies.hit() {
                tracing::warn!(
                    timed_out = count,
                    timeout_ms = state.body_read_timeout.as_millis() as u64,
                    "answered 408 to requests whose body did not arrive within EDGE_BODY_READ_TIMEOUT_MS (count since the last such warning)"
                );
            }
            return Err(EdgeError::BodyTimeout);
        }
    };
    let received_at = Utc::now();
    let header = |name: &str| request_headers.get(name).map(|v| v.as_bytes());
    if let Err(reason) = state.secrets.verify(
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        &body,
        received_at.timestamp(),
    ) {
        state.metrics.signature_failed(reason);
        // Scanners and misconfigured senders can send thousands of these: each at
        // debug, a warning at most once a minute (the metric counts every one).
        tracing::debug!(reason = reason.reason(), "refused a request: {reason}");
        if let Some(count) = state.refused.hit() {
            tracing::warn!(
                refused = count,
                latest_reason = reason.reason(),
                "refused requests with 401 (bad or missing Slack signature) since the last such warning; slackline_edge_signature_failures_total has them by reason"
            );
        }
        return Err(reason.into());
    }

    let info = inspect(&body);
    let kind = match &info.kind {
        EnvelopeKind::UrlVerification { challenge } => {
            state.metrics.url_verified();
            return Ok(Json(serde_json::json!({ "challenge": challenge })).into_response());
        }
        EnvelopeKind::EventCallback => "event_callback",
        EnvelopeKind::AppRateLimited => "app_rate_limited",
        EnvelopeKind::Other => "other",
        EnvelopeKind::NotJson => "not_json",
    };

    let span = tracing::debug_span!(
        "slack_event",
        event_id = info.event_id.as_deref().unwrap_or("-"),
        channel = %info.routing_key,
        event_type = info.event_type.as_deref().unwrap_or("-"),
    );
    let accept = accept(&state, &request_headers, body, &info, received_at).instrument(span);
    match tokio::time::timeout_at(headers_at + state.deadline, accept).await {
        Ok(Ok(archive_key)) => {
            state.metrics.accepted(kind);
            if info.kind == EnvelopeKind::AppRateLimited {
                state.metrics.app_rate_limited();
                tracing::warn!(team = %info.routing_key, archive_key, "Slack sent app_rate_limited: events for this workspace were dropped by Slack");
            }
            Ok(StatusCode::OK.into_response())
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, event_id = ?info.event_id, channel = %info.routing_key, "answering 503");
            Err(e)
        }
        Err(_) => {
            state.metrics.deadline_exceeded();
            tracing::error!(event_id = ?info.event_id, channel = %info.routing_key, deadline_ms = state.deadline.as_millis() as u64, "answering 503: deadline exceeded");
            Err(EdgeError::Deadline)
        }
    }
}

/// Archives and produces, overlapping the two: the request first gets its place in
/// the archive (its locator, which the Kafka record carries), then the archive's flush
/// and Kafka's acknowledgement run at the same time. The answer is 200 only when both
/// succeeded; a failure at either fails the request, and Slack's retry makes a new,
/// complete attempt.
///
/// The invariant this keeps (guarantee 1): every request answered 200 is durably in
/// the archive at its locator and acknowledged by Kafka. What it no longer keeps is
/// "every Kafka record names an archive entry that exists": a record whose archive
/// write failed after it was produced (its request got 503, counted in
/// `slackline_edge_archive_failures_total`, and Slack's retry carries the event again
/// with an entry that is durable) names a locator that resolves to nothing, or to
/// that same request's own line when the failed write left it behind (a cut-back that
/// failed too, an S3 PUT stored after the client gave up), never to another
/// request's line (a segment takes no write after a failed one). Nothing reads the
/// archive through a record's locator to process it (the normalizer reads the
/// record's own payload), so such a record is processed like any other, and the
/// retry is a duplicate the fact keys absorb.
async fn accept(
    state: &EdgeState,
    request_headers: &HeaderMap,
    body: Bytes,
    info: &EnvelopeInfo,
    received_at: DateTime<Utc>,
) -> Result<String, EdgeError> {
    let text_header = |name: &str| request_headers.get(name).and_then(|v| v.to_str().ok());
    let retry_num = text_header(RETRY_NUM_HEADER);
    let retry_reason = text_header(RETRY_REASON_HEADER);

    let record = ArchiveRecord {
        received_at,
        headers: ARCHIVED_HEADERS
            .iter()
            .filter_map(|name| Some(((*name).to_owned(), text_header(name)?.to_owned())))
            .collect::<BTreeMap<_, _>>(),
        body: body.clone(),
    };
    let started = Instant::now();
    let appending = match state.archive.append(&record).await {
        Ok(appending) => appending,
        Err(e) => {
            state.metrics.archive_failed(&e);
            return Err(e.into());
        }
    };
    let locator = appending.locator().to_owned();

    let received = received_at.to_rfc3339_opts(SecondsFormat::Micros, true);
    let mut kafka_headers = OwnedHeaders::new_with_capacity(6).insert(Header {
        key: headers::ARCHIVE_KEY,
        value: Some(locator.as_str()),
    });
    kafka_headers = kafka_headers.insert(Header {
        key: headers::RECEIVED_AT,
        value: Some(received.as_str()),
    });
    for (name, value) in [
        (headers::EVENT_ID, info.event_id.as_deref()),
        (headers::EVENT_TYPE, info.event_type.as_deref()),
        (headers::RETRY_NUM, retry_num),
        (headers::RETRY_REASON, retry_reason),
    ] {
        if let Some(value) = value {
            kafka_headers = kafka_headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
    }
    let kafka_record = FutureRecord::to(&state.raw_topic)
        .key(info.routing_key.as_str())
        .payload(body.as_ref())
        .headers(kafka_headers)
        .timestamp(received_at.timestamp_millis());
    let produced = Instant::now();
    let archived = async {
        let result = appending.durable().await;
        match &result {
            Ok(_) => state
                .metrics
                .archive_written(started.elapsed().as_secs_f64()),
            Err(e) => state.metrics.archive_failed(e),
        }
        result
    };
    let delivered = async {
        let delivery = match state.producer.send_result(kafka_record) {
            Ok(delivery) => delivery,
            Err((e, _)) => {
                // Queue full or producer fenced: fail now rather than wait.
                state.metrics.kafka_failed();
                return Err(EdgeError::from(e));
            }
        };
        match delivery.await {
            Ok(Ok(_)) => {
                state
                    .metrics
                    .kafka_delivered(produced.elapsed().as_secs_f64());
                Ok(())
            }
            Ok(Err((e, _))) => {
                state.metrics.kafka_failed();
                Err(e.into())
            }
            Err(_) => {
                state.metrics.kafka_failed();
                Err(EdgeError::KafkaCancelled)
            }
        }
    };
    let (archived, delivered) = tokio::join!(archived, delivered);
    archived?;
    delivered?;
    Ok(locator)
}
