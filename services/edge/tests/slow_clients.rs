//! Slow and too many clients on real sockets (tokio `TcpStream` to the edge's bound
//! port, the shared Apache Kafka broker, a file archive): a client trickling its
//! headers or its body is cut off and does not hold up anyone else, idle keep-alive
//! connections are closed after the idle timeout (not the header timeout), too many
//! requests in flight get 503 with `Retry-After` at once, and too many connections
//! are closed at once instead of waiting forever.
//!
//! Each test waits on what the edge does with a deadline; none asserts a latency. A
//! guarantee under test is "cut off / answered instead of hanging until the test's own
//! timeout".
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use std::net::SocketAddr;
use std::time::Duration;

use helpers::*;
use slackline_archive::S3Settings;
use slackline_edge::Limits;
use slackline_slack::sign;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

/// One byte every `TRICKLE`: a slow-loris client.
const TRICKLE: Duration = Duration::from_millis(100);

struct Fixture {
    edge: slackline_edge::Edge,
    _shutdown: slackline_service::Shutdown,
    _dir: tempfile::TempDir,
    _cluster: TestCluster,
}

impl Fixture {
    fn addr(&self) -> SocketAddr {
        self.edge.addr
    }

    fn counter(&self, name: &str, label: Option<(&str, &str)>) -> u64 {
        counter(&self.edge, name, label)
    }
}

/// The edge on the shared broker with `limits` (and, when given, a request deadline
/// other than the helpers' 2 s).
async fn fixture(limits: Limits, deadline: Option<Duration>) -> Fixture {
    let cluster = kafka_cluster();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let mut config = config(
        &cluster.bootstrap_servers(),
        &cluster.names().raw_events(),
        &url,
        S3Settings::default(),
    );
    config.limits = limits;
    if let Some(deadline) = deadline {
        config.deadline = deadline;
    }
    let (edge, shutdown) = start_edge(config).await;
    Fixture {
        edge,
        _shutdown: shutdown,
        _dir: dir,
        _cluster: cluster,
    }
}

/// A client that gives up after 5 s (an edge that hangs fails the test) and keeps no
/// idle connection, so that it holds no connection slot between requests.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Posts a signed message event; the status, or the error's text.
async fn try_post(http: &reqwest::Client, addr: SocketAddr, id: &str) -> Result<u16, String> {
    let body = message_event("C0SLOW", id, "hello");
    let ts = now();
    http.post(format!("http://{addr}/slack/events"))
        .header("content-type", "application/json")
        .header("X-Slack-Request-Timestamp", ts.to_string())
        .header("X-Slack-Signature", sign(SECRET, ts, &body))
        .body(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

/// Posts until one is answered 200, within `within`.
async fn post_until_ok(http: &reqwest::Client, addr: SocketAddr, id: &str, within: Duration) {
    let until = Instant::now() + within;
    let mut last = Err(String::from("not tried"));
    while Instant::now() < until {
        last = try_post(http, addr, id).await;
        if last == Ok(200) {
            return;
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!("no 200 within {within:?}; last answer: {last:?}");
}

/// The head of a signed `POST /slack/events` for `body`.
fn signed_head(body: &[u8]) -> String {
    let ts = now();
    format!(
        "POST /slack/events HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n\
         X-Slack-Request-Timestamp: {ts}\r\nX-Slack-Signature: {}\r\n\
         Content-Length: {}\r\n\r\n",
        sign(SECRET, ts, body),
        body.len()
    )
}

/// Reads one response's head (and its `Content-Length` body) from `stream`: the
/// status and the lower-cased headers. `None` if the connection ends first.
async fn read_response(
    stream: &mut (impl AsyncReadExt + Unpin),
) -> Option<(u16, Vec<(String, String)>)> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => raw.push(byte[0]),
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some((status, headers))
}

/// Resolves when the server closes the connection (end of stream or reset), with
/// what it sent before.
fn until_closed(mut reader: tokio::net::tcp::OwnedReadHalf) -> JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut received = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// Writes `bytes` one at a time every [`TRICKLE`] until they are all sent or the
/// server closed the connection (`closed` finished, or a write failed). Returns how
/// many were sent.
async fn trickle<T>(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    bytes: &[u8],
    closed: &JoinHandle<T>,
) -> usize {
    for (sent, byte) in bytes.iter().enumerate() {
        if closed.is_finished() || writer.write_all(&[*byte]).await.is_err() {
            return sent;
        }
        sleep(TRICKLE).await;
    }
    bytes.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_slow_to_send_their_headers_are_cut_off_and_others_are_served_meanwhile() {
    let f = fixture(
        Limits {
            header_read_timeout: Duration::from_secs(1),
            ..Limits::default()
        },
        None,
    )
    .await;
    let http = http();
    // The producer is connected before the slow clients arrive.
    post_until_ok(&http, f.addr(), "EvWarm", Duration::from_secs(20)).await;

    // One connects and sends nothing; one sends a request head a byte at a time
    // (about 25 s for the whole head).
    let silent = TcpStream::connect(f.addr()).await.unwrap();
    let (silent_reader, _silent_writer) = silent.into_split();
    let silent_closed = until_closed(silent_reader);
    let head = format!(
        "POST /slack/events HTTP/1.1\r\nHost: edge\r\nX-Padding: {}\r\n\r\n",
        "x".repeat(200)
    );
    let slow = TcpStream::connect(f.addr()).await.unwrap();
    let (slow_reader, mut slow_writer) = slow.into_split();
    let slow_closed = until_closed(slow_reader);
    let slowloris = tokio::spawn(async move {
        let sent = trickle(&mut slow_writer, head.as_bytes(), &slow_closed).await;
        (sent, head.len(), slow_closed)
    });

    // Meanwhile, Slack's requests are answered.
    for i in 0..3 {
        assert_eq!(
            try_post(&http, f.addr(), &format!("EvMeanwhile{i}")).await,
            Ok(200)
        );
    }

    let (sent, total, slow_closed) = slowloris.await.unwrap();
    assert!(
        sent < total,
        "the edge read the whole head, a byte every {TRICKLE:?} ({total} bytes), without cutting the client off"
    );
    let received = timeout(Duration::from_secs(5), slow_closed)
        .await
        .expect("the trickling client's connection is closed")
        .unwrap();
    assert!(
        received.is_empty(),
        "no answer to a request whose head never arrived: {:?}",
        String::from_utf8_lossy(&received)
    );
    let received = timeout(Duration::from_secs(10), silent_closed)
        .await
        .expect("a connection that sends nothing is closed after the header timeout")
        .unwrap();
    assert!(received.is_empty());
    assert_eq!(
        f.counter(
            "slackline_edge_read_timeouts_total",
            Some(("phase", "header"))
        ),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_trickling_its_body_gets_408_within_the_deadline_and_nothing_is_accepted() {
    let f = fixture(
        Limits {
            body_read_timeout: Duration::from_secs(1),
            ..Limits::default()
        },
        None,
    )
    .await;
    let body = message_event("C0SLOW", "EvTrickledBody", &"y".repeat(100));
    let (first, rest) = body.split_at(body.len() - 150);
    let stream = TcpStream::connect(f.addr()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(signed_head(&body).as_bytes())
        .await
        .unwrap();
    writer.write_all(first).await.unwrap();
    // The last 150 bytes a byte at a time: 15 s for the whole body.
    let answered = tokio::spawn(async move {
        let response = read_response(&mut reader).await;
        (response, reader)
    });
    let sent = trickle(&mut writer, rest, &answered).await;
    let (response, reader) = timeout(Duration::from_secs(5), answered)
        .await
        .expect("the trickling client is answered")
        .unwrap();
    let (status, headers) = response.expect("an answer before the connection closed");
    assert_eq!(status, 408, "after {sent} of {} trickled bytes", rest.len());
    assert!(
        sent < rest.len(),
        "the edge waited for the whole trickled body"
    );
    let received = timeout(Duration::from_secs(5), until_closed(reader))
        .await
        .expect("the connection is closed after the 408")
        .unwrap();
    assert!(received.is_empty());
    assert!(headers.contains(&("connection".into(), "close".into())));
    assert_eq!(
        f.counter(
            "slackline_edge_read_timeouts_total",
            Some(("phase", "body"))
        ),
        1
    );
    assert_eq!(f.counter("slackline_edge_accepted_total", None), 0);
    assert_eq!(
        f.counter("slackline_edge_requests_total", Some(("status", "408"))),
        1
    );
}

/// Opens a connection and sends a signed head announcing 1,000 bytes of body, then
/// ten of them: a request in flight until the connection is dropped.
async fn held_request(addr: SocketAddr) -> TcpStream {
    let body = vec![b' '; 1000];
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(signed_head(&body).as_bytes())
        .await
        .unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_in_flight_limit_requests_get_503_with_retry_after_at_once() {
    // Bodies may take 30 s: the held requests stay in flight for the whole test.
    let f = fixture(
        Limits {
            max_in_flight: 2,
            body_read_timeout: Duration::from_secs(30),
            ..Limits::default()
        },
        Some(Duration::from_secs(30)),
    )
    .await;
    let http = http();
    post_until_ok(&http, f.addr(), "EvWarm", Duration::from_secs(20)).await;

    // One of two held: a normal request is still served.
    let first = held_request(f.addr()).await;
    assert_eq!(try_post(&http, f.addr(), "EvBesideOne").await, Ok(200));

    // Two held: the next request gets 503 with Retry-After, at once (each probe
    // gives up after 5 s; the held requests are in flight within milliseconds).
    let second = held_request(f.addr()).await;
    let until = Instant::now() + Duration::from_secs(10);
    let mut answers = Vec::new();
    let response = loop {
        assert!(
            Instant::now() < until,
            "no 503 while 2 requests were in flight with EDGE_MAX_IN_FLIGHT=2: {answers:?}"
        );
        let body = message_event("C0SLOW", "EvOverLimit", "hello");
        let ts = now();
        let response = http
            .post(format!("http://{}/slack/events", f.addr()))
            .header("X-Slack-Request-Timestamp", ts.to_string())
            .header("X-Slack-Signature", sign(SECRET, ts, &body))
            .body(body)
            .send()
            .await
            .expect("an answer within 5 s, not a hang");
        if response.status() == 503 {
            break response;
        }
        answers.push(response.status().as_u16());
        sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    assert!(f.counter("slackline_edge_overloaded_total", None) >= 1);
    assert!(f.counter("slackline_edge_requests_total", Some(("status", "503"))) >= 1);
    assert_eq!(f.counter("slackline_edge_in_flight_requests", None), 2);

    // The held clients go away: their permits come back and requests are served.
    drop(first);
    drop(second);
    post_until_ok(&http, f.addr(), "EvAfter", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_connection_cap_new_connections_are_closed_at_once() {
    // Idle connections are kept for the whole test: 30 s to send headers.
    let f = fixture(
        Limits {
            max_connections: 3,
            max_in_flight: 3,
            header_read_timeout: Duration::from_secs(30),
            ..Limits::default()
        },
        None,
    )
    .await;
    // Three connections that send nothing fill the cap (accepted in order).
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(f.addr()).await.unwrap());
    }
    // The fourth is closed at once instead of waiting.
    let fourth = TcpStream::connect(f.addr()).await.unwrap();
    let (reader, _writer) = fourth.into_split();
    let received = timeout(Duration::from_secs(5), until_closed(reader))
        .await
        .expect("a connection over EDGE_MAX_CONNECTIONS is closed, not left waiting")
        .unwrap();
    assert!(received.is_empty());
    assert!(f.counter("slackline_edge_connections_refused_total", None) >= 1);
    assert_eq!(f.counter("slackline_edge_open_connections", None), 3);

    // One goes away: a normal request gets in.
    drop(held.pop());
    post_until_ok(&http(), f.addr(), "EvAfterCap", Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_survives_the_header_timeout_and_is_closed_after_the_idle_timeout() {
    let f = fixture(
        Limits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(3),
            ..Limits::default()
        },
        None,
    )
    .await;
    post_until_ok(&http(), f.addr(), "EvWarm", Duration::from_secs(20)).await;
    let mut stream = TcpStream::connect(f.addr()).await.unwrap();
    for i in 0..2 {
        let body = message_event("C0SLOW", &format!("EvKeepAlive{i}"), "hello");
        stream
            .write_all(signed_head(&body).as_bytes())
            .await
            .unwrap();
        stream.write_all(&body).await.unwrap();
        let (status, _) = read_response(&mut stream)
            .await
            .expect("an answer on the kept-alive connection");
        assert_eq!(status, 200, "request {i}");
        if i == 0 {
            // Idle for longer than the header timeout but not the idle timeout: a
            // load balancer's pooled connection stays usable.
            sleep(Duration::from_secs(1)).await;
        }
    }
    // Then idle past the idle timeout: the edge closes it.
    let (reader, _writer) = stream.into_split();
    let received = timeout(Duration::from_secs(15), until_closed(reader))
        .await
        .expect("an idle keep-alive connection is closed after EDGE_IDLE_TIMEOUT_MS")
        .unwrap();
    assert!(received.is_empty());
}
