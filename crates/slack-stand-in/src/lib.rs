//! A Slack Web API stand-in on a real socket (127.0.0.1, a free port): the
//! slack-sender's tests point `SLACK_API_BASE_URL` at it, and `slackline dev` runs
//! it when `SLACK_API_BASE_URL` is not set, so that replies work offline.
//!
//! It records every call it receives, in arrival order and never deduplicated
//! (method, bearer token, JSON body, arrival time, what it answered), and answers
//! `chat.postMessage` with `ok` and a fresh, increasing `ts` unless a scripted answer
//! is queued for the channel (or for any channel): 429 with `Retry-After`, an HTTP
//! status, a Slack error (`"ok": false`), or any of these after a delay (a delay
//! longer than the client's timeout is a send that got no answer). A post answered
//! `ok` counts as posted when it arrives, before any delay of its answer: it is in
//! [`SlackApiStandIn::posted`] and published to subscribers at once, as Slack sends
//! the message's event while the HTTP answer may still be on its way (a delayed error
//! answer is a post Slack did not take whose answer came late or never). A post can
//! also be held open until the test releases it ([`SlackApiStandIn::hold`]): recorded
//! (and posted, if answered `ok`) at once, answered only on release.
//! `conversations.replies` returns a thread as Slack does: the parent first, then the
//! replies posted to it in ts order, with their metadata when
//! `include_all_metadata=true`, a page at a time (`limit`, `cursor`,
//! [`SlackApiStandIn::set_page_size`]). `users.info`
//! answers a user named after its id. Successful posts are also published to
//! [`SlackApiStandIn::subscribe`]rs, which `dev` uses to deliver the echo Slack would
//! send back.
//!
//! A crate of its own (axum, serde_json, tokio only) so that the production CLI does
//! not depend on the test-only `slackline-testkit`, which re-exports it for tests
//! (with a `start` that panics, as test helpers do); nothing here panics.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// The bot id (`B…`) the stand-in reports for posted messages.
pub const STAND_IN_BOT_ID: &str = "B0SLACKLINE";
/// The bot user id (`U…`) the stand-in reports for posted messages.
pub const STAND_IN_BOT_USER_ID: &str = "U0SLACKLINEBOT";
/// The app id (`A…`) the stand-in reports for posted messages.
pub const STAND_IN_APP_ID: &str = "A0SLACKLINE";

/// What the stand-in answers to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `200 {"ok": true, "channel": …, "ts": <fresh>, "message": …}`.
    Ok,
    /// `429` with `Retry-After: <seconds>` and `{"ok": false, "error": "ratelimited"}`.
    RateLimited {
        /// The `Retry-After` header, in seconds.
        retry_after_secs: u64,
    },
    /// This HTTP status with an empty JSON object (`503`, `500`, `502`, ...).
    Status(u16),
    /// `200 {"ok": false, "error": <code>}` (`channel_not_found`, `invalid_auth`, ...).
    Error(String),
    /// Waits this long, then answers as the inner answer (if the client is still
    /// there: a delay longer than its timeout is a send with no answer).
    Delayed(Duration, Box<Answer>),
}

impl Answer {
    /// A Slack error code answer.
    pub fn error(code: &str) -> Answer {
        Answer::Error(code.to_owned())
    }

    /// `answer` after `delay`.
    pub fn delayed(delay: Duration, answer: Answer) -> Answer {
        Answer::Delayed(delay, Box::new(answer))
    }

    fn label(&self) -> String {
        match self {
            Answer::Ok => "ok".to_owned(),
            Answer::RateLimited { retry_after_secs } => {
                format!("429 retry-after {retry_after_secs}")
            }
            Answer::Status(status) => format!("http {status}"),
            Answer::Error(code) => format!("error {code}"),
            Answer::Delayed(delay, inner) => format!("{} after {delay:?}", inner.label()),
        }
    }
}

/// One call the stand-in received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The Web API method (`chat.postMessage`, `users.info`).
    pub method: String,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// The JSON body (`Null` when the body was not JSON); for `users.info` the query.
    pub body: Value,
    /// When the request arrived.
    pub at: Instant,
    /// What it was answered (`ok`, `429 retry-after 2`, `http 503`, `error …`).
    pub answer: String,
    /// The ts given to a successful post.
    pub ts: Option<String>,
}

impl Call {
    /// A string field of the body.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(Value::as_str)
    }
}

/// A message the stand-in accepted, as published to subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct PostedMessage {
    /// The channel.
    pub channel: String,
    /// The ts the stand-in gave it.
    pub ts: String,
    /// The request body (`text`, `thread_ts`, `metadata`, ...).
    pub body: Value,
}

#[derive(Default)]
struct Script {
    by_channel: HashMap<String, VecDeque<Answer>>,
    any: VecDeque<Answer>,
}

/// One held request: whether it arrived, and its release.
#[derive(Debug)]
struct HoldState {
    arrived: tokio::sync::watch::Sender<bool>,
    released: tokio::sync::watch::Sender<bool>,
}

/// The next `chat.postMessage` to a channel, held open until [`Hold::release`] (or
/// until the `Hold` is dropped).
#[derive(Debug)]
pub struct Hold(Arc<HoldState>);

impl Hold {
    /// Whether the held request has arrived (and is being held, or was).
    pub fn arrived(&self) -> bool {
        *self.0.arrived.borrow()
    }

    /// Waits until the held request has arrived.
    pub async fn wait_arrived(&self) {
        let mut arrived = self.0.arrived.subscribe();
        let _ = arrived.wait_for(|a| *a).await;
    }

    /// Lets the held request be answered.
    pub fn release(&self) {
        self.0.released.send_replace(true);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.release();
    }
}

struct Shared {
    calls: Mutex<Vec<Call>>,
    script: Mutex<Script>,
    holds: Mutex<HashMap<String, VecDeque<Arc<HoldState>>>>,
    /// Messages added by [`SlackApiStandIn::add_message`]: (channel, ts, body).
    added: Mutex<Vec<(String, String, Value)>>,
    /// The most messages one `conversations.replies` page returns.
    page_size: AtomicU64,
    /// The last ts given, in microseconds.
    counter: AtomicU64,
    posted: tokio::sync::broadcast::Sender<PostedMessage>,
}

/// A running stand-in; it stops when dropped.
pub struct SlackApiStandIn {
    /// The base URL to configure as `SLACK_API_BASE_URL` (`http://127.0.0.1:PORT/api`).
    pub base_url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

impl Shared {
    fn next_answer(&self, channel: &str) -> Answer {
        let mut script = lock(&self.script);
        if let Some(answer) = script
            .by_channel
            .get_mut(channel)
            .and_then(VecDeque::pop_front)
        {
            return answer;
        }
        script.any.pop_front().unwrap_or(Answer::Ok)
    }

    /// A ts from the clock (microseconds), strictly increasing, as Slack's are.
    fn fresh_ts(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut last = self.counter.load(Ordering::SeqCst);
        loop {
            let next = now.max(last + 1);
            match self
                .counter
                .compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return format!("{}.{:06}", next / 1_000_000, next % 1_000_000),
                Err(actual) => last = actual,
            }
        }
    }
}

async fn post_message(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let channel = body
        .get("channel")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut answer = shared.next_answer(&channel);
    let label = answer.label();
    let mut delay = Duration::ZERO;
    while let Answer::Delayed(d, inner) = answer {
        delay += d;
        answer = *inner;
    }
    // A post Slack takes is posted (and its event sent) at once, whatever the delay
    // of its answer: a slow or lost answer is an ambiguous send, not a failed one.
    let ts = (answer == Answer::Ok).then(|| shared.fresh_ts());
    let hold = lock(&shared.holds)
        .get_mut(&channel)
        .and_then(VecDeque::pop_front);
    lock(&shared.calls).push(Call {
        method: "chat.postMessage".to_owned(),
        token: bearer(&headers),
        body: body.clone(),
        at,
        answer: label,
        ts: ts.clone(),
    });
    if let Some(ts) = &ts {
        let _ = shared.posted.send(PostedMessage {
            channel: channel.clone(),
            ts: ts.clone(),
            body: body.clone(),
        });
    }
    if let Some(hold) = hold {
        hold.arrived.send_replace(true);
        let mut released = hold.released.subscribe();
        let _ = released.wait_for(|r| *r).await;
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match answer {
        Answer::Ok => {
            let ts = ts.unwrap_or_default();
            let message = message_json(&body, &ts, true);
            Json(json!({"ok": true, "channel": channel, "ts": ts, "message": message}))
                .into_response()
        }
        Answer::RateLimited { retry_after_secs } => {
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"ok": false, "error": "ratelimited"})),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                response.headers_mut().insert("retry-after", v);
            }
            response
        }
        Answer::Status(status) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(json!({})),
        )
            .into_response(),
        Answer::Error(code) => Json(json!({"ok": false, "error": code})).into_response(),
        Answer::Delayed(..) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The message Slack stores for a post with `body`, given `ts`.
fn message_json(body: &Value, ts: &str, with_metadata: bool) -> Value {
    let mut message = json!({
        "type": "message", "user": STAND_IN_BOT_USER_ID, "bot_id": STAND_IN_BOT_ID,
        "app_id": STAND_IN_APP_ID, "text": body.get("text").cloned().unwrap_or(Value::Null),
        "ts": ts,
    });
    for field in ["thread_ts", "metadata", "blocks"] {
        if field == "metadata" && !with_metadata {
            continue;
        }
        if let Some(v) = body.get(field) {
            message[field] = v.clone();
        }
    }
    if body.get("reply_broadcast").and_then(Value::as_bool) == Some(true) {
        message["subtype"] = json!("thread_broadcast");
    }
    message
}

/// `conversations.replies`: the thread rooted at `ts` in `channel`, the parent first
/// (a stand-in for the customer's message when it was not posted here), then the
/// replies posted to it in ts order; metadata only with `include_all_metadata=true`.
async fn conversations_replies(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    // GET with a query string, or POST with a form body (Slack takes both).
    let mut params = query;
    if !body.is_empty() {
        for pair in String::from_utf8_lossy(&body).split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                params.insert(k.to_owned(), v.replace('+', " "));
            }
        }
    }
    let channel = params.get("channel").cloned().unwrap_or_default();
    let root = params.get("ts").cloned().unwrap_or_default();
    let with_metadata = params
        .get("include_all_metadata")
        .is_some_and(|v| v == "true" || v == "1");
    let page_size = usize::try_from(shared.page_size.load(Ordering::SeqCst)).unwrap_or(1000);
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(1000)
        .min(page_size)
        .max(1);
    let start = match params.get("cursor").filter(|c| !c.is_empty()) {
        None => Some(0),
        Some(cursor) => cursor
            .strip_prefix("page:")
            .and_then(|i| i.parse::<usize>().ok()),
    };
    let record = |answer: &str| {
        lock(&shared.calls).push(Call {
            method: "conversations.replies".to_owned(),
            token: bearer(&headers),
            body: json!(params),
            at: Instant::now(),
            answer: answer.to_owned(),
            ts: None,
        });
    };
    let Some(start) = start else {
        record("error invalid_cursor");
        return Json(json!({"ok": false, "error": "invalid_cursor"})).into_response();
    };
    if channel.is_empty() || root.is_empty() {
        record("error invalid_arguments");
        return Json(json!({"ok": false, "error": "invalid_arguments"})).into_response();
    }
    let mut thread: Vec<(String, Value)> = lock(&shared.calls)
        .iter()
        .filter(|c| c.method == "chat.postMessage" && c.field("channel") == Some(&channel))
        .filter_map(|c| {
            let ts = c.ts.clone()?;
            let in_thread = c.field("thread_ts") == Some(&root) || ts == root;
            in_thread.then(|| (ts.clone(), message_json(&c.body, &ts, with_metadata)))
        })
        .collect();
    thread.extend(
        lock(&shared.added)
            .iter()
            .filter(|(c, ts, body)| {
                *c == channel
                    && (body.get("thread_ts").and_then(Value::as_str) == Some(&root) || *ts == root)
            })
            .map(|(_, ts, body)| (ts.clone(), message_json(body, ts, with_metadata))),
    );
    thread.sort_by(|a, b| a.0.cmp(&b.0));
    if !thread.iter().any(|(ts, _)| *ts == root) {
        thread.insert(
            0,
            (
                root.clone(),
                json!({"type": "message", "user": "U0CUSTOMER", "text": "(the thread's parent)",
                       "ts": root, "thread_ts": root, "reply_count": thread.len()}),
            ),
        );
    }
    let end = (start + limit).min(thread.len());
    let page: Vec<Value> = thread
        .get(start.min(end)..end)
        .unwrap_or_default()
        .iter()
        .map(|(_, m)| m.clone())
        .collect();
    let has_more = end < thread.len();
    let next_cursor = if has_more {
        format!("page:{end}")
    } else {
        String::new()
    };
    record("ok");
    Json(json!({
        "ok": true,
        "messages": page,
        "has_more": has_more,
        "response_metadata": {"next_cursor": next_cursor},
    }))
    .into_response()
}

async fn users_info(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let user = query.get("user").cloned().unwrap_or_default();
    lock(&shared.calls).push(Call {
        method: "users.info".to_owned(),
        token: bearer(&headers),
        body: json!({ "user": user }),
        at: Instant::now(),
        answer: "ok".to_owned(),
        ts: None,
    });
    Json(json!({
        "ok": true,
        "user": {"id": user, "name": user, "profile": {"display_name": user}},
    }))
    .into_response()
}

async fn unknown(State(shared): State<Arc<Shared>>, Path(method): Path<String>) -> Response {
    lock(&shared.calls).push(Call {
        method: method.clone(),
        token: None,
        body: Value::Null,
        at: Instant::now(),
        answer: "error unknown_method".to_owned(),
        ts: None,
    });
    Json(json!({"ok": false, "error": "unknown_method"})).into_response()
}

impl SlackApiStandIn {
    /// Starts the stand-in on a free loopback port.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start() -> std::io::Result<SlackApiStandIn> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::serve(listener)
    }

    /// Serves on `listener` (for a fixed port).
    ///
    /// # Errors
    ///
    /// When the listener has no local address.
    pub fn serve(listener: tokio::net::TcpListener) -> std::io::Result<SlackApiStandIn> {
        let addr = listener.local_addr()?;
        let (posted, _) = tokio::sync::broadcast::channel(1024);
        let shared = Arc::new(Shared {
            calls: Mutex::new(Vec::new()),
            script: Mutex::new(Script::default()),
            holds: Mutex::new(HashMap::new()),
            added: Mutex::new(Vec::new()),
            page_size: AtomicU64::new(1000),
            counter: AtomicU64::new(0),
            posted,
        });
        let app = Router::new()
            .route("/api/chat.postMessage", post(post_message))
            .route("/api/users.info", get(users_info).post(users_info))
            .route(
                "/api/conversations.replies",
                get(conversations_replies).post(conversations_replies),
            )
            .route("/api/{method}", post(unknown).get(unknown))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(SlackApiStandIn {
            base_url: format!("http://{addr}/api"),
            shared,
            task,
        })
    }

    /// Queues `answer` for the next `chat.postMessage` to `channel`.
    pub fn script(&self, channel: &str, answer: Answer) {
        lock(&self.shared.script)
            .by_channel
            .entry(channel.to_owned())
            .or_default()
            .push_back(answer);
    }

    /// Queues `answer` for the next `chat.postMessage` to a channel with nothing
    /// queued of its own.
    pub fn script_any(&self, answer: Answer) {
        lock(&self.shared.script).any.push_back(answer);
    }

    /// Holds the next `chat.postMessage` to `channel` open: it is recorded (and
    /// posted, if its answer is `ok`) when it arrives, and answered only once the
    /// returned [`Hold`] is released or dropped. Holds queue per channel.
    pub fn hold(&self, channel: &str) -> Hold {
        let state = Arc::new(HoldState {
            arrived: tokio::sync::watch::Sender::new(false),
            released: tokio::sync::watch::Sender::new(false),
        });
        lock(&self.shared.holds)
            .entry(channel.to_owned())
            .or_default()
            .push_back(state.clone());
        Hold(state)
    }

    /// Adds a message to `channel` as if posted with `body` (`text`, `thread_ts`,
    /// `metadata`, ...) without a call: one Slack finished posting after its answer
    /// was lost, say. It shows in `conversations.replies`, not in [`Self::calls`];
    /// returns its ts.
    pub fn add_message(&self, channel: &str, body: Value) -> String {
        let ts = self.shared.fresh_ts();
        lock(&self.shared.added).push((channel.to_owned(), ts.clone(), body));
        ts
    }

    /// The most messages a `conversations.replies` page returns (default 1000, as
    /// Slack's `limit` maximum); a smaller one makes callers page with `cursor`.
    pub fn set_page_size(&self, size: usize) {
        self.shared.page_size.store(
            u64::try_from(size.max(1)).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// The calls of `method` received so far, in arrival order.
    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }

    /// Every call received so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared.calls).clone()
    }

    /// The `chat.postMessage` calls received so far, in arrival order (whatever they
    /// were answered).
    pub fn post_calls(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "chat.postMessage")
            .collect()
    }

    /// The `chat.postMessage` calls that were answered `ok`, in arrival order.
    pub fn posted(&self) -> Vec<Call> {
        self.post_calls()
            .into_iter()
            .filter(|c| c.ts.is_some())
            .collect()
    }

    /// Every message accepted from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<PostedMessage> {
        self.shared.posted.subscribe()
    }
}

impl Drop for SlackApiStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}
