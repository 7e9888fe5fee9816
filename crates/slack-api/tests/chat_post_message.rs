//! `chat.postMessage` against a real HTTP server on loopback that answers like Slack.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use slackline_slack_api::{PostedMessage, SlackApiError};

#[tokio::test]
async fn posts_a_thread_reply_as_json_with_the_team_token() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let posted = api
        .chat_post_message(TEAM_B, "C0SUPPORT", Some("1700000000.000100"), "on it")
        .await
        .unwrap();
    assert_eq!(
        posted,
        PostedMessage {
            channel: "C0SUPPORT".into(),
            ts: "1700000000.000001".into(),
        }
    );
    let seen = slack.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "chat.postMessage");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN_B}"))
    );
    assert_eq!(
        seen[0].body,
        Some(json!({ "channel": "C0SUPPORT", "thread_ts": "1700000000.000100", "text": "on it" }))
    );
}

#[tokio::test]
async fn top_level_post_has_no_thread_ts() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    api.chat_post_message(TEAM_A, "C0SUPPORT", None, "hello")
        .await
        .unwrap();
    let body = slack.seen()[0].body.clone().unwrap();
    assert_eq!(body, json!({ "channel": "C0SUPPORT", "text": "hello" }));
}

#[tokio::test]
async fn slack_errors_are_api_errors() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let error = api
        .chat_post_message(TEAM_A, C_NOT_IN, None, "hello")
        .await
        .unwrap_err();
    assert_eq!(
        error,
        SlackApiError::Api {
            error: "not_in_channel".into()
        }
    );
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn rate_limit_with_short_retry_after_waits_and_posts_once() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let started = Instant::now();
    let posted = api
        .chat_post_message(TEAM_A, C_RATE_ONCE, None, "hello")
        .await
        .unwrap();
    assert_eq!(posted.channel, C_RATE_ONCE);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(slack.requests_for(C_RATE_ONCE), 2);
}

#[tokio::test]
async fn rate_limit_with_long_retry_after_fails_fast_for_that_channel_only() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let started = Instant::now();
    let error = api
        .chat_post_message(TEAM_A, C_RATE_LONG, None, "hello")
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        error,
        SlackApiError::RateLimited {
            retry_after: Duration::from_secs(120)
        }
    );
    assert!(error.is_retryable());
    // The same channel is gated without a request; another channel is not.
    let error = api
        .chat_post_message(TEAM_A, C_RATE_LONG, None, "again")
        .await
        .unwrap_err();
    assert!(matches!(error, SlackApiError::RateLimited { .. }));
    assert_eq!(slack.requests_for(C_RATE_LONG), 1);
    api.chat_post_message(TEAM_A, "C0OTHER", None, "hello")
        .await
        .unwrap();
}

#[tokio::test]
async fn unknown_team_is_no_token_without_any_request() {
    let slack = FakeSlack::start().await;
    let api = slack.client();
    let error = api
        .chat_post_message("T0UNKNOWN", "C0SUPPORT", None, "hello")
        .await
        .unwrap_err();
    assert!(matches!(error, SlackApiError::NoToken { .. }));
    assert_eq!(slack.requests(), 0);
}
