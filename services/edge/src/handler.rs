//! `POST /slack/events`: verify, archive, produce, and only then answer 200.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use slackline_archive::{object_key, Archive, ArchiveRecord};
use slackline_kafka::headers;
use slackline_slack::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER};
use slackline_slack::{inspect, EnvelopeInfo, EnvelopeKind, SignatureError, SigningSecrets};
use tracing::Instrument;

use crate::metrics::EdgeMetrics;

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

/// What the handler shares across requests.
pub(crate) struct EdgeState {
    pub secrets: SigningSecrets,
    pub archive: Archive,
    pub producer: FutureProducer,
    pub raw_topic: String,
    pub deadline: std::time::Duration,
    pub metrics: EdgeMetrics,
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
}

impl IntoResponse for EdgeError {
    fn into_response(self) -> Response {
        match self {
            EdgeError::Signature(_) => {
                (StatusCode::UNAUTHORIZED, "invalid signature").into_response()
            }
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

pub(crate) async fn slack_events(
    State(state): State<Arc<EdgeState>>,
    request_headers: HeaderMap,
    body: Bytes,
) -> Result<Response, EdgeError> {
    let received_at = Utc::now();
    let header = |name: &str| request_headers.get(name).map(|v| v.as_bytes());
    if let Err(reason) = state.secrets.verify(
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        &body,
        received_at.timestamp(),
    ) {
        state.metrics.signature_failed(reason);
        tracing::info!(reason = reason.reason(), "refused a request: {reason}");
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
    match tokio::time::timeout(state.deadline, accept).await {
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

/// Archives, then produces. The archive comes first so that every Kafka record names
/// an archive object that exists (replay and audits rely on that); a failure at
/// either step fails the request, and Slack's retry makes a new, complete attempt.
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
    let key = object_key(received_at, info.event_id.as_deref(), retry_num);

    let record = ArchiveRecord {
        received_at,
        headers: ARCHIVED_HEADERS
            .iter()
            .filter_map(|name| Some(((*name).to_owned(), text_header(name)?.to_owned())))
            .collect::<BTreeMap<_, _>>(),
        body: body.clone(),
    };
    let started = Instant::now();
    let put = match record.to_json() {
        Ok(json) => state.archive.put(&key, Bytes::from(json)).await,
        Err(e) => Err(e),
    };
    if let Err(e) = put {
        state.metrics.archive_failed();
        return Err(e.into());
    }
    state
        .metrics
        .archive_written(started.elapsed().as_secs_f64());

    let received = received_at.to_rfc3339_opts(SecondsFormat::Micros, true);
    let mut kafka_headers = OwnedHeaders::new_with_capacity(6).insert(Header {
        key: headers::ARCHIVE_KEY,
        value: Some(key.as_str()),
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
    let record = FutureRecord::to(&state.raw_topic)
        .key(info.routing_key.as_str())
        .payload(body.as_ref())
        .headers(kafka_headers)
        .timestamp(received_at.timestamp_millis());
    let started = Instant::now();
    let delivery = match state.producer.send_result(record) {
        Ok(delivery) => delivery,
        Err((e, _)) => {
            // Queue full or producer fenced: fail now rather than wait.
            state.metrics.kafka_failed();
            return Err(e.into());
        }
    };
    match delivery.await {
        Ok(Ok(_)) => {
            state
                .metrics
                .kafka_delivered(started.elapsed().as_secs_f64());
            Ok(key)
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
}
