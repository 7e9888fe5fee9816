//! A fake Slack Web API on loopback: a real axum HTTP server on 127.0.0.1:0 that
//! answers `users.info` and `chat.postMessage` the way Slack does, picks its
//! behaviour from the user id or channel asked for, checks the bearer token, and
//! records every request it receives.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use slackline_slack_api::{ApiOptions, BotTokens, SlackApi};

/// Installing team with a full, visible directory.
pub const TEAM_A: &str = "TA0001";
/// A second installing team, with its own token.
pub const TEAM_B: &str = "TB0002";
/// The organisation Slack Connect users come from.
pub const TEAM_CONNECT: &str = "TC0003";
pub const TOKEN_A: &str = "xoxb-team-a-secret";
pub const TOKEN_B: &str = "xoxb-team-b-secret";

/// Full user with an email.
pub const U_FULL: &str = "U0FULL";
/// Slack Connect user from another organisation: no email, no display name.
pub const U_CONNECT: &str = "U0CONNECT";
/// `user_not_found`.
pub const U_MISSING: &str = "U0MISSING";
/// `user_not_visible`.
pub const U_HIDDEN: &str = "U0HIDDEN";
/// 429 with `Retry-After: 1` on the first request, then ok.
pub const U_RATE_ONCE: &str = "U0RATEONCE";
/// 429 with `Retry-After: 120`, always.
pub const U_RATE_LONG: &str = "U0RATELONG";
/// HTTP 500, always.
pub const U_500: &str = "U0FIVEHUNDRED";
/// HTTP 500 on the first request, then ok.
pub const U_500_ONCE: &str = "U0FIVEONCE";
/// Answers after 3 s (longer than the tests' request timeout).
pub const U_SLOW: &str = "U0SLOW";
/// Answers ok after 300 ms (for single-flight).
pub const U_LAGGY: &str = "U0LAGGY";
/// Answers 200 with a body that is not JSON.
pub const U_GARBAGE: &str = "U0GARBAGE";

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `users.info` or `chat.postMessage`.
    pub method: String,
    /// The user asked for, or the channel posted to.
    pub subject: String,
    /// The `Authorization` header as sent.
    pub authorization: Option<String>,
    /// The JSON body of a `chat.postMessage`.
    pub body: Option<Value>,
}

#[derive(Default)]
struct Shared {
    seen: Vec<Seen>,
    per_subject: HashMap<String, u32>,
    next_ts: u64,
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Mutex<Shared>>,
    /// token → the team Slack would say it belongs to.
    tokens: Arc<HashMap<&'static str, &'static str>>,
}

/// A running fake Slack; the server task ends with the test's runtime.
pub struct FakeSlack {
    /// `http://127.0.0.1:PORT/api`.
    pub base_url: String,
    shared: Arc<Mutex<Shared>>,
}

impl FakeSlack {
    pub async fn start() -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = AppState {
            shared: Arc::clone(&shared),
            tokens: Arc::new(HashMap::from([(TOKEN_A, TEAM_A), (TOKEN_B, TEAM_B)])),
        };
        let app = Router::new()
            .route("/api/users.info", get(users_info))
            .route("/api/chat.postMessage", post(chat_post_message))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base_url: format!("http://{addr}/api"),
            shared,
        }
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().unwrap().seen.clone()
    }

    /// How many requests were received in total.
    pub fn requests(&self) -> usize {
        self.shared.lock().unwrap().seen.len()
    }

    /// How many requests asked about `subject` (a user id or channel).
    pub fn requests_for(&self, subject: &str) -> usize {
        self.seen().iter().filter(|s| s.subject == subject).count()
    }

    /// A client for both teams with the right tokens and test-friendly options.
    pub fn client(&self) -> SlackApi {
        self.client_with(ApiOptions {
            request_timeout: Duration::from_millis(500),
            ..ApiOptions::default()
        })
    }

    pub fn client_with(&self, options: ApiOptions) -> SlackApi {
        let tokens = BotTokens::parse(&format!("{TEAM_A}={TOKEN_A},{TEAM_B}={TOKEN_B}")).unwrap();
        SlackApi::new(&self.base_url, tokens, options).unwrap()
    }
}

/// Records the request and returns the team of its token (None: bad token) and how
/// many times this subject was asked before.
fn record(
    state: &AppState,
    method: &str,
    subject: &str,
    headers: &HeaderMap,
    body: Option<Value>,
) -> (Option<&'static str>, u32) {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let team = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .and_then(|token| state.tokens.get(token).copied());
    let mut shared = state.shared.lock().unwrap();
    shared.seen.push(Seen {
        method: method.to_owned(),
        subject: subject.to_owned(),
        authorization,
        body,
    });
    let count = shared.per_subject.entry(subject.to_owned()).or_default();
    let before = *count;
    *count += 1;
    (team, before)
}

fn slack_error(error: &str) -> Response {
    Json(json!({ "ok": false, "error": error })).into_response()
}

fn rate_limited(seconds: u64) -> Response {
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({ "ok": false, "error": "ratelimited" })),
    )
        .into_response();
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from(seconds));
    response
}

fn full_user(id: &str, team: &str) -> Value {
    json!({
        "ok": true,
        "user": {
            "id": id,
            "team_id": team,
            "name": "ada",
            "deleted": false,
            "color": "9f69e7",
            "real_name": "Ada Lovelace",
            "tz": "Europe/London",
            "tz_offset": 0,
            "is_admin": false,
            "is_bot": false,
            "is_app_user": false,
            "updated": 1_700_000_000,
            "profile": {
                "title": "Analyst",
                "phone": "",
                "real_name": "Ada Lovelace",
                "real_name_normalized": "Ada Lovelace",
                "display_name": "ada.l",
                "display_name_normalized": "ada.l",
                "email": "ada@example.com",
                "image_72": "https://example.com/ada.png",
                "team": team,
                "fields": null
            },
            "some_future_field": { "nested": [1, 2, 3] }
        }
    })
}

async fn users_info(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let user = query.get("user").cloned().unwrap_or_default();
    let (team, before) = record(&state, "users.info", &user, &headers, None);
    let Some(team) = team else {
        return slack_error("invalid_auth");
    };
    if user.is_empty() {
        return slack_error("invalid_arguments");
    }
    match user.as_str() {
        U_FULL => Json(full_user(&user, team)).into_response(),
        U_CONNECT => Json(json!({
            "ok": true,
            "user": {
                "id": user,
                "team_id": TEAM_CONNECT,
                "name": "grace",
                "deleted": false,
                "real_name": "Grace Hopper",
                "is_bot": false,
                "is_stranger": true,
                "profile": {
                    "real_name": "Grace Hopper",
                    "display_name": "",
                    "team": TEAM_CONNECT
                }
            }
        }))
        .into_response(),
        U_MISSING => slack_error("user_not_found"),
        U_HIDDEN => slack_error("user_not_visible"),
        U_RATE_ONCE if before == 0 => rate_limited(1),
        U_RATE_ONCE => Json(full_user(&user, team)).into_response(),
        U_RATE_LONG => rate_limited(120),
        U_500 => (StatusCode::INTERNAL_SERVER_ERROR, "upstream broke").into_response(),
        U_500_ONCE if before == 0 => {
            (StatusCode::INTERNAL_SERVER_ERROR, "upstream broke").into_response()
        }
        U_500_ONCE => Json(full_user(&user, team)).into_response(),
        U_SLOW => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Json(full_user(&user, team)).into_response()
        }
        U_LAGGY => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Json(full_user(&user, team)).into_response()
        }
        U_GARBAGE => (StatusCode::OK, "<html>gateway</html>").into_response(),
        // Any other id: a plain user whose name is the id, so capacity tests can
        // look up many distinct users.
        _ => Json(json!({
            "ok": true,
            "user": { "id": user, "team_id": team, "name": user.to_lowercase() }
        }))
        .into_response(),
    }
}

/// Channel that always answers 429 with `Retry-After: 120`.
pub const C_RATE_LONG: &str = "C0RATELONG";
/// Channel that answers 429 with `Retry-After: 1` on the first post, then ok.
pub const C_RATE_ONCE: &str = "C0RATEONCE";
/// Channel the bot is not in.
pub const C_NOT_IN: &str = "C0NOTIN";

async fn chat_post_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let channel = body
        .get("channel")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let (team, before) = record(
        &state,
        "chat.postMessage",
        &channel,
        &headers,
        Some(body.clone()),
    );
    if team.is_none() {
        return slack_error("invalid_auth");
    }
    let is_json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return slack_error("invalid_form_data");
    }
    if body
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .is_empty()
    {
        return slack_error("no_text");
    }
    match channel.as_str() {
        "" => slack_error("channel_not_found"),
        C_NOT_IN => slack_error("not_in_channel"),
        C_RATE_LONG => rate_limited(120),
        C_RATE_ONCE if before == 0 => rate_limited(1),
        _ => {
            let ts = {
                let mut shared = state.shared.lock().unwrap();
                shared.next_ts += 1;
                format!("1700000000.{:06}", shared.next_ts)
            };
            Json(json!({
                "ok": true,
                "channel": channel,
                "ts": ts,
                "message": { "type": "message", "text": body["text"], "ts": ts }
            }))
            .into_response()
        }
    }
}
