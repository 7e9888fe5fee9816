//! A local HTTP server that accepts Sentry envelopes, on a real socket: what a
//! service configured with [`Receiver::dsn`] sends arrives here as Sentry would get
//! it (`POST /api/<project>/envelope/`, `X-Sentry-Auth`, the envelope format:
//! newline-separated JSON headers and items). Each answer can be delayed, to test
//! that a service waits for its reports before it exits; the first answers can be
//! given (a 429 with rate limit headers, say); [`Receiver::silent`] stores requests
//! and never answers.
//!
//! Shared by the tests of `slackline-service` and `slackline-consumer` (included with
//! `#[path]`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub auth: Option<String>,
    pub body: Vec<u8>,
}

/// See the module docs.
pub struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
}

/// A 200 with an empty JSON object.
pub const OK: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

/// How the receiver answers.
#[derive(Clone)]
struct Answers {
    delay: Duration,
    /// Raw HTTP answers for the first requests (then [`OK`]).
    first: Arc<Mutex<std::collections::VecDeque<String>>>,
    /// Never answer (keep the connection open until the client closes it).
    silent: bool,
}

impl Receiver {
    /// Listens on 127.0.0.1 (a free port); every answer waits `delay` first.
    pub fn start(delay: Duration) -> Receiver {
        Self::start_with(delay, Vec::new())
    }

    /// As [`Receiver::start`], answering the first requests with `first` (raw HTTP
    /// answers, in order), then with [`OK`].
    pub fn start_with(delay: Duration, first: Vec<String>) -> Receiver {
        Self::listen(Answers {
            delay,
            first: Arc::new(Mutex::new(first.into())),
            silent: false,
        })
    }

    /// Accepts connections and stores requests, never answers.
    pub fn silent() -> Receiver {
        Self::listen(Answers {
            delay: Duration::ZERO,
            first: Arc::default(),
            silent: true,
        })
    }

    fn listen(answers: Answers) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the Sentry receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stored = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let stored = stored.clone();
                let answers = answers.clone();
                std::thread::spawn(move || serve(conn, &stored, &answers));
            }
        });
        Receiver { addr, requests }
    }

    /// The DSN that points a client here (project 1, key `public`).
    pub fn dsn(&self) -> String {
        format!("http://public@{}/1", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("receiver lock").clone()
    }

    /// The bodies of every request, as text (lossy), for "never contains" checks.
    pub fn raw_text(&self) -> String {
        self.requests()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every event item received so far, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .flat_map(|r| parse_envelope(&r.body))
            .filter(|(header, _)| header["type"] == "event")
            .map(|(_, payload)| serde_json::from_slice(&payload).expect("an event item is JSON"))
            .collect()
    }

    /// Waits until an event matching `pred` arrived.
    pub fn wait_for_event(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.events().into_iter().find(|e| pred(e)) {
                return event;
            }
            assert!(
                Instant::now() < deadline,
                "no Sentry event {what} within {timeout:?}; received: {:#?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// HTTP/1.1 with keep-alive: requests with a `Content-Length` body.
fn serve(conn: TcpStream, stored: &Mutex<Vec<Request>>, answers: &Answers) {
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut length = 0usize;
        let mut auth = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.parse().unwrap_or(0),
                    "x-sentry-auth" => auth = Some(value.to_owned()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        stored
            .lock()
            .expect("receiver lock")
            .push(Request { path, auth, body });
        if answers.silent {
            // Until the client gives up and closes the connection.
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
            return;
        }
        std::thread::sleep(answers.delay);
        let answer = answers
            .first
            .lock()
            .expect("receiver lock")
            .pop_front()
            .unwrap_or_else(|| OK.to_owned());
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// The items of an envelope: `(item header, payload)`. The envelope's own header is
/// the first line; an item's payload is `length` bytes when its header says so, else
/// the rest of the line.
pub fn parse_envelope(body: &[u8]) -> Vec<(Value, Vec<u8>)> {
    let mut items = Vec::new();
    let Some(first) = body.iter().position(|b| *b == b'\n') else {
        return items;
    };
    let _: Value = serde_json::from_slice(&body[..first]).expect("the envelope header is JSON");
    let mut at = first + 1;
    while at < body.len() {
        let end = body[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(body.len(), |i| at + i);
        let header_bytes = &body[at..end];
        if header_bytes.iter().all(u8::is_ascii_whitespace) {
            at = end + 1;
            continue;
        }
        let header: Value = serde_json::from_slice(header_bytes).expect("an item header is JSON");
        at = end + 1;
        let payload_end = match header["length"].as_u64() {
            Some(n) => at + usize::try_from(n).expect("length fits"),
            None => body[at..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(body.len(), |i| at + i),
        };
        items.push((header, body[at..payload_end.min(body.len())].to_vec()));
        at = payload_end + 1;
    }
    items
}
