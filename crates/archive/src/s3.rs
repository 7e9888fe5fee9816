//! The S3 archive (`s3://bucket/prefix`) through aws-sdk-s3: AWS itself, or any
//! S3-compatible server (Garage, MinIO, Ceph) with an endpoint and path-style URLs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use slackline_service::Env;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::segment::{is_segment, same_hour, segment_key, Locator};
use crate::{enqueue, Appending, ArchiveError, ArchiveOptions, ArchiveRecord};

/// How to reach S3. Built from the usual `AWS_*` variables by [`S3Settings::from_env`],
/// or explicitly (tests).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`; `None` means AWS itself.
    pub endpoint: Option<String>,
    /// `AWS_REGION` (default `us-east-1`).
    pub region: String,
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`; `None` means the SDK's default
    /// credential chain (profile, web identity, instance metadata).
    pub credentials: Option<(String, String)>,
    /// `AWS_SESSION_TOKEN`, for temporary static credentials.
    pub session_token: Option<String>,
    /// `AWS_S3_FORCE_PATH_STYLE`: `bucket` in the path, not the host name.
    pub force_path_style: bool,
    /// Per-attempt timeout; the edge's own deadline bounds the whole request.
    pub attempt_timeout: Option<Duration>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(id, _)| (id, "<redacted>")),
            )
            .field("force_path_style", &self.force_path_style)
            .finish()
    }
}

impl S3Settings {
    /// Settings for an S3-compatible server at `endpoint` (Garage, MinIO) with a static
    /// key, path-style URLs and the given per-attempt timeout.
    pub fn for_endpoint(
        endpoint: &str,
        region: &str,
        access_key_id: &str,
        secret_access_key: &str,
        attempt_timeout: Duration,
    ) -> S3Settings {
        S3Settings {
            endpoint: Some(endpoint.to_owned()),
            region: region.to_owned(),
            credentials: Some((access_key_id.to_owned(), secret_access_key.to_owned())),
            session_token: None,
            force_path_style: true,
            attempt_timeout: Some(attempt_timeout),
        }
    }

    /// Reads `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY`, `AWS_S3_FORCE_PATH_STYLE`.
    pub fn from_env(env: &mut Env) -> S3Settings {
        let endpoint = env
            .get("AWS_ENDPOINT_URL_S3")
            .or_else(|| env.get("AWS_ENDPOINT_URL"))
            .map(str::to_owned);
        let region = env
            .get("AWS_REGION")
            .or_else(|| env.get("AWS_DEFAULT_REGION"))
            .unwrap_or("us-east-1")
            .to_owned();
        let credentials = match (
            env.get("AWS_ACCESS_KEY_ID"),
            env.get("AWS_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => Some((id.to_owned(), secret.to_owned())),
            (None, None) => None,
            (Some(_), None) => {
                env.problem(
                    "AWS_SECRET_ACCESS_KEY",
                    "required when AWS_ACCESS_KEY_ID is set",
                );
                None
            }
            (None, Some(_)) => {
                env.problem(
                    "AWS_ACCESS_KEY_ID",
                    "required when AWS_SECRET_ACCESS_KEY is set",
                );
                None
            }
        };
        let force_path_style = env.bool_or("AWS_S3_FORCE_PATH_STYLE", false);
        S3Settings {
            endpoint,
            region,
            credentials,
            session_token: env.get("AWS_SESSION_TOKEN").map(str::to_owned),
            force_path_style,
            attempt_timeout: Some(Duration::from_secs(2)),
        }
    }

    async fn client(&self) -> aws_sdk_s3::Client {
        let mut builder = match &self.credentials {
            Some((id, secret)) => aws_sdk_s3::Config::builder()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .credentials_provider(Credentials::new(
                    id,
                    secret,
                    self.session_token.clone(),
                    None,
                    "slackline-env",
                )),
            None => {
                let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .load()
                    .await;
                aws_sdk_s3::config::Builder::from(&shared)
            }
        };
        builder = builder
            .region(Region::new(self.region.clone()))
            .force_path_style(self.force_path_style)
            .timeout_config({
                let mut timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(1));
                timeouts.set_operation_attempt_timeout(self.attempt_timeout);
                timeouts.build()
            });
        if let Some(endpoint) = &self.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        aws_sdk_s3::Client::from_conf(builder.build())
    }
}

/// A bucket and key prefix. Requests are batched into segments ([`crate::segment`]):
/// a writer task collects what arrives within [`ArchiveOptions::s3_linger`] of a
/// batch's first request (up to 1,000 requests or 8 MiB) and stores the batch with one
/// PUT, at most [`ArchiveOptions::s3_max_puts`] at a time; every request of the batch
/// is durable when its PUT succeeds. The queue in front of it is bounded: full, a
/// write fails at once with [`ArchiveError::Busy`].
#[derive(Debug, Clone)]
pub struct S3Archive {
    store: Arc<Store>,
    writer: mpsc::Sender<S3Write>,
    /// Requests queued, placed or being stored, not yet answered.
    pending: Arc<AtomicUsize>,
    capacity: usize,
}

#[derive(Debug)]
struct Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

struct S3Write {
    received_at: DateTime<Utc>,
    line: Vec<u8>,
    placed: Option<oneshot::Sender<Result<String, ArchiveError>>>,
    durable: Option<oneshot::Sender<Result<(), ArchiveError>>>,
    pending: Arc<AtomicUsize>,
}

impl S3Write {
    fn place(&mut self, locator: String) {
        if let Some(placed) = self.placed.take() {
            // The requester may have given up (deadline): the write still stands.
            let _ = placed.send(Ok(locator));
        }
    }

    fn answer(mut self, result: Result<(), ArchiveError>) {
        if let Some(durable) = self.durable.take() {
            let _ = durable.send(result);
        }
    }
}

impl Drop for S3Write {
    /// Unanswered (the writer task is gone): "stopped"; either way no longer pending.
    fn drop(&mut self) {
        if let Some(placed) = self.placed.take() {
            let _ = placed.send(Err(ArchiveError::WriterStopped));
        }
        if let Some(durable) = self.durable.take() {
            let _ = durable.send(Err(ArchiveError::WriterStopped));
        }
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Most requests in one PUT.
const MAX_BATCH: usize = 1000;
/// Most bytes in one PUT.
const MAX_BATCH_BYTES: usize = 8 << 20;

fn sdk_error<'k, E, R>(
    operation: &'static str,
    key: &'k str,
) -> impl FnOnce(SdkError<E, R>) -> ArchiveError + 'k
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    move |e| ArchiveError::S3 {
        operation,
        key: key.to_owned(),
        message: DisplayErrorContext(&e).to_string(),
    }
}

impl S3Archive {
    /// An archive in `bucket` under `prefix`; starts its writer task (which ends when
    /// the last clone is dropped).
    pub async fn new(
        settings: &S3Settings,
        bucket: &str,
        prefix: &str,
        options: &ArchiveOptions,
    ) -> S3Archive {
        let prefix = prefix.trim_matches('/');
        let store = Arc::new(Store {
            client: settings.client().await,
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        });
        let capacity = options.queue_capacity.max(1);
        let (writer, requests) = mpsc::channel(capacity);
        tokio::spawn(write_loop(
            store.clone(),
            requests,
            options.s3_linger,
            Arc::new(Semaphore::new(options.s3_max_puts.max(1))),
        ));
        S3Archive {
            store,
            writer,
            pending: Arc::new(AtomicUsize::new(0)),
            capacity,
        }
    }

    /// Queues `record`; resolves once it has its place in a batch (after the linger).
    /// Fails at once with [`ArchiveError::Busy`] when `queue_capacity` requests are
    /// already queued, placed or being stored (which bounds the memory of batches
    /// waiting for a PUT slot too).
    pub async fn append(&self, record: &ArchiveRecord) -> Result<Appending, ArchiveError> {
        let line = record.to_json()?;
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(ArchiveError::Busy);
        }
        let (placed, placed_rx) = oneshot::channel();
        let (durable, durable_rx) = oneshot::channel();
        // From here the request counts as pending until it is answered or dropped.
        let request = S3Write {
            received_at: record.received_at,
            line,
            placed: Some(placed),
            durable: Some(durable),
            pending: self.pending.clone(),
        };
        enqueue(&self.writer, request, placed_rx, durable_rx).await
    }

    /// Stores a whole object under `key` (for tools and tests: the edge appends to
    /// segments); S3 acknowledges a PUT only once it is durable.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        self.store.put(key, bytes).await
    }

    /// The bytes at `locator`: one request's line (a ranged GET), or a whole object.
    pub async fn get(&self, locator: &Locator) -> Result<Bytes, ArchiveError> {
        let store = &self.store;
        let full = store.full_key(&locator.key);
        let shown = locator.to_string();
        let mut request = store.client.get_object().bucket(&store.bucket).key(&full);
        if let Some((offset, len)) = locator.range {
            // The line and its newline (the range's end is inclusive).
            request = request.range(format!("bytes={offset}-{}", offset + len));
        }
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(ArchiveError::NotFound(shown))
            }
            // 416: the range starts past the object's end.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => {
                return Err(ArchiveError::NotFound(shown))
            }
            Err(e) => return Err(sdk_error("GetObject", &full)(e)),
        };
        let body = out.body.collect().await.map_err(|e| ArchiveError::S3 {
            operation: "GetObject",
            key: full.clone(),
            message: e.to_string(),
        })?;
        let bytes = body.into_bytes();
        let Some((_, len)) = locator.range else {
            return Ok(bytes);
        };
        match usize::try_from(len) {
            Ok(len) if bytes.len() == len + 1 && bytes.last() == Some(&b'\n') => {
                Ok(bytes.slice(..len))
            }
            _ => Err(ArchiveError::NotFound(shown)),
        }
    }

    /// Every key under `prefix` (relative to the archive prefix), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, ArchiveError> {
        let store = &self.store;
        let full = store.full_key(prefix);
        let mut pages = store
            .client
            .list_objects_v2()
            .bucket(&store.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(sdk_error("ListObjectsV2", &full))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .filter_map(|k| k.strip_prefix(&store.prefix))
                    .map(str::to_owned),
            );
        }
        keys.sort();
        Ok(keys)
    }

    /// Checks that the bucket answers (readiness).
    pub async fn check(&self) -> Result<(), ArchiveError> {
        self.store
            .client
            .head_bucket()
            .bucket(&self.store.bucket)
            .send()
            .await
            .map_err(sdk_error("HeadBucket", &self.store.bucket))?;
        Ok(())
    }

    /// `s3://bucket/prefix`, for logs.
    pub fn describe(&self) -> String {
        format!("s3://{}/{}", self.store.bucket, self.store.prefix)
    }
}

impl Store {
    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        let full = self.full_key(key);
        let content_type = if is_segment(key) {
            "application/jsonl"
        } else {
            "application/json"
        };
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(sdk_error("PutObject", &full))?;
        Ok(())
    }
}

/// The writer task: a batch is what arrives within `linger` of its first request
/// (whatever is already queued when `linger` is zero); each hour's part of it becomes
/// one segment, placed at once and stored by a PUT of its own (at most `puts` at a
/// time: waiting for one stops the batching, so the bounded queue fills and refuses).
async fn write_loop(
    store: Arc<Store>,
    mut requests: mpsc::Receiver<S3Write>,
    linger: Duration,
    puts: Arc<Semaphore>,
) {
    while let Some(first) = requests.recv().await {
        let deadline = tokio::time::Instant::now() + linger;
        let mut bytes = first.line.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            // `timeout_at` polls first: what is already queued is taken even at zero linger.
            match tokio::time::timeout_at(deadline, requests.recv()).await {
                Ok(Some(next)) => {
                    bytes += next.line.len();
                    batch.push(next);
                }
                Ok(None) | Err(_) => break,
            }
        }
        // In receive order, so that a segment's key (its first request's time) is the
        // earliest of its requests.
        batch.sort_by_key(|w| w.received_at);
        while !batch.is_empty() {
            let hour = batch[0].received_at;
            let end = batch
                .iter()
                .position(|w| !same_hour(w.received_at, hour))
                .unwrap_or(batch.len());
            let rest = batch.split_off(end);
            let mut run = std::mem::replace(&mut batch, rest);
            // Placed first (the edge produces meanwhile), then stored when a PUT slot
            // is free; what waits is bounded by the pending count.
            let key = segment_key(hour);
            let mut body = Vec::with_capacity(run.iter().map(|w| w.line.len() + 1).sum());
            for w in &mut run {
                let locator = Locator::line(&key, body.len() as u64, w.line.len() as u64);
                body.extend_from_slice(&w.line);
                body.push(b'\n');
                w.place(locator.to_string());
            }
            let Ok(permit) = puts.clone().acquire_owned().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let result = store.put(&key, Bytes::from(body)).await;
                if let Err(e) = &result {
                    tracing::error!(error = %e, key, "archive segment PUT failed");
                }
                for w in run {
                    w.answer(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(ArchiveError::S3 {
                            operation: "PutObject",
                            key: key.clone(),
                            message: e.to_string(),
                        }),
                    });
                }
                drop(permit);
            });
        }
    }
}
