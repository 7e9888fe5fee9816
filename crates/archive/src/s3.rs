//! The S3 archive (`s3://bucket/prefix`) through aws-sdk-s3: AWS itself, or any
//! S3-compatible server (Garage, MinIO, Ceph) with an endpoint and path-style URLs.

use std::time::Duration;

use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use slackline_service::Env;

use crate::ArchiveError;

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

/// A bucket and key prefix.
#[derive(Debug, Clone)]
pub struct S3Archive {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
}

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
    /// An archive in `bucket` under `prefix`.
    pub async fn new(settings: &S3Settings, bucket: &str, prefix: &str) -> S3Archive {
        let prefix = prefix.trim_matches('/');
        S3Archive {
            client: settings.client().await,
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        }
    }

    /// `s3://bucket/prefix`, for logs.
    pub fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Stores an object; S3 acknowledges a PUT only once it is durable.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        let full = self.full_key(key);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .content_type("application/json")
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(sdk_error("PutObject", &full))?;
        Ok(())
    }

    /// Reads an object.
    pub async fn get(&self, key: &str) -> Result<Bytes, ArchiveError> {
        let full = self.full_key(key);
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(ArchiveError::NotFound(key.to_owned()))
            }
            Err(e) => return Err(sdk_error("GetObject", &full)(e)),
        };
        let body = out.body.collect().await.map_err(|e| ArchiveError::S3 {
            operation: "GetObject",
            key: full.clone(),
            message: e.to_string(),
        })?;
        Ok(body.into_bytes())
    }

    /// Every key under `prefix` (relative to the archive prefix), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, ArchiveError> {
        let full = self.full_key(prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
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
                    .filter_map(|k| k.strip_prefix(&self.prefix))
                    .map(str::to_owned),
            );
        }
        keys.sort();
        Ok(keys)
    }

    /// Checks that the bucket answers (readiness).
    pub async fn check(&self) -> Result<(), ArchiveError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(sdk_error("HeadBucket", &self.bucket))?;
        Ok(())
    }
}
