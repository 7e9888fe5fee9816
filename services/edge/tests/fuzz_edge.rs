//! Generated hostile requests on the edge's request path (issue 12, "Fuzzing").
//!
//! - The pure steps the handler takes before any I/O, over arbitrary bytes and
//!   headers: `SigningSecrets::verify`, then `inspect` (url_verification or a routing
//!   key), then the archive key built from the event id and the retry header. Every
//!   request ends as exactly one decision; a body signed with a configured secret
//!   within the clock skew is never refused whatever its bytes; one altered byte or a
//!   foreign secret is; keys are always usable (Kafka key, header, object name).
//! - The real edge on a real socket (file archive, the shared Apache Kafka broker): a
//!   few hundred generated requests (arbitrary and Slack-shaped bodies, mutated
//!   signature, timestamp, content-type and retry headers) each get one of 200, 401 or
//!   503; a correctly signed one is never answered 4xx (SYSTEM.md, guarantee 1); what
//!   reached Kafka is exactly the bodies answered 200 (plus at most those answered
//!   503), each naming an archive object with the same body; url_verification echoes
//!   its challenge. Raw garbage on the socket gets no 200 and leaves the edge serving.
//!
//! Bounded: `FUZZ_EDGE_CASES` (default 3000) pure cases, `FUZZ_EDGE_REQUESTS`
//! (default 300) HTTP requests, from a fixed seed (`PROPTEST_RNG_SEED` picks another).
//! The long runs are the `edge_request` target of `fuzz/` (see the README).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod helpers;

use std::collections::HashMap;
use std::time::Duration;

use helpers::*;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::{
    Config, FileFailurePersistence, RngAlgorithm, RngSeed, TestRng, TestRunner,
};
use slackline_archive::{Archive, ArchiveRecord, S3Settings};
use slackline_slack::signature::MAX_CLOCK_SKEW_SECS;
use slackline_slack::{inspect, sign, EnvelopeKind, SignatureError, SigningSecrets};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The secrets the test edge is configured with (helpers::config).
const SECRETS: [&str; 2] = ["old-secret", SECRET];
const SEED: u64 = 0x00ed_6e12;

fn count(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proptest_config(cases: u32) -> Config {
    let mut config = Config::with_cases(cases);
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config.failure_persistence = Some(Box::new(FileFailurePersistence::Off));
    config
}

/// A usable key: what `inspect` promises for Kafka keys, event ids and header values.
fn valid_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic())
}

// ---------------------------------------------------------------- generation

/// Strings a header or a JSON field may carry, hostile ones included.
const ODD: [&str; 16] = [
    "",
    " ",
    "0",
    "-1",
    "1.5",
    "v0=",
    "v1=00",
    "../../etc/passwd",
    "C0SHARED01",
    "\u{202E}x",
    "\u{1F600}",
    "http_timeout",
    "99999999999999999999",
    "unknown",
    "%00",
    "a,b;c=d",
];

/// Bodies: arbitrary bytes, text, and Slack-shaped JSON with odd values.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let text = prop_oneof![
        select(&ODD[..]).prop_map(str::to_owned),
        any::<String>(),
        "[ -~]{0,70}",
    ];
    let channel = prop_oneof![
        text.clone().prop_map(serde_json::Value::String),
        any::<i64>().prop_map(serde_json::Value::from),
        Just(serde_json::json!({"id": "C0OBJ"})),
        Just(serde_json::Value::Null),
    ];
    let slack = (
        select(
            &[
                "event_callback",
                "url_verification",
                "app_rate_limited",
                "",
                "x",
            ][..],
        ),
        select(
            &[
                "message",
                "reaction_added",
                "app_home_opened",
                "",
                "file_shared",
            ][..],
        ),
        channel,
        text.clone(),
        text.clone(),
        any::<bool>(),
    )
        .prop_map(|(outer, inner, channel, event_id, challenge, with_team)| {
            let mut root = serde_json::json!({
                "type": outer,
                "event_id": event_id,
                "challenge": challenge,
                "event": {"type": inner, "channel": channel, "ts": "1764000000.000100",
                          "item": {"channel": "C0ITEM"}},
            });
            if with_team {
                root["team_id"] = serde_json::json!("T0HOME");
            }
            serde_json::to_vec(&root).unwrap()
        });
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..1024),
        1 => any::<String>().prop_map(String::into_bytes),
        3 => slack,
        1 => (1usize..4, slack_body_prefix()).prop_map(|(n, p)| p.repeat(n)),
    ]
}

const PREFIXES: [&[u8]; 4] = [
    br#"{"type":"event_callback","event":{"type":"message","channel":"C1"}"#,
    br#"{"type":"url_verification","challenge":"\ud800"}"#,
    br#"{"event":{"channel":{"id":"C\u0000"}}}"#,
    br#"[{"#,
];

fn slack_body_prefix() -> impl Strategy<Value = Vec<u8>> {
    select(&PREFIXES[..]).prop_map(<[u8]>::to_vec)
}

/// Header values: only bytes a header value may carry on the wire (visible ASCII,
/// space, tab, obs-text), no leading or trailing whitespace (trimmed in transit).
fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        select(&ODD[..]).prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(
            prop_oneof![0x21u8..=0x7e, 0x80u8..=0xff, Just(b' '), Just(b'\t')],
            0..80
        ),
    ]
    .prop_map(|mut v| {
        while v.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            v.remove(0);
        }
        while v.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
            v.pop();
        }
        v
    })
}

#[derive(Debug, Clone)]
enum Timestamp {
    Absent,
    Raw(Vec<u8>),
    /// Our clock plus this many seconds.
    Clock(i64),
}

#[derive(Debug, Clone)]
enum Signature {
    Absent,
    Raw(Vec<u8>),
    /// Signed with configured secret `i`.
    Signed(usize),
    /// Signed with configured secret `i`, hex digits upper-cased.
    Upper(usize),
    /// Signed with a secret the edge does not have.
    Foreign(String),
    /// Signed correctly, then byte `at` of the body xor-ed with `x` (non-zero).
    Altered(prop::sample::Index, u8),
}

#[derive(Debug, Clone)]
struct Request {
    body: Vec<u8>,
    timestamp: Timestamp,
    signature: Signature,
    content_type: Option<Vec<u8>>,
    retry_num: Option<Vec<u8>>,
    retry_reason: Option<Vec<u8>>,
}

fn request() -> impl Strategy<Value = Request> {
    let timestamp = prop_oneof![
        1 => Just(Timestamp::Absent),
        1 => header_value().prop_map(Timestamp::Raw),
        6 => prop_oneof![
            4 => -MAX_CLOCK_SKEW_SECS + 5..MAX_CLOCK_SKEW_SECS - 5,
            1 => any::<i32>().prop_map(i64::from),
        ]
        .prop_map(Timestamp::Clock),
    ];
    let signature = prop_oneof![
        1 => Just(Signature::Absent),
        1 => header_value().prop_map(Signature::Raw),
        5 => (0usize..2).prop_map(Signature::Signed),
        1 => (0usize..2).prop_map(Signature::Upper),
        1 => "[ -~]{1,20}".prop_map(Signature::Foreign),
        1 => (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, x)| Signature::Altered(i, x)),
    ];
    let content_type = prop::option::of(prop_oneof![
        select(
            &[
                "application/json",
                "application/x-www-form-urlencoded",
                "text/plain; charset=utf-16",
                "multipart/form-data; boundary=x"
            ][..]
        )
        .prop_map(|s| s.as_bytes().to_vec()),
        header_value(),
    ]);
    (
        body(),
        timestamp,
        signature,
        content_type,
        prop::option::of(prop_oneof![
            (0u32..5).prop_map(|n| n.to_string().into_bytes()),
            header_value()
        ]),
        prop::option::of(header_value()),
    )
        .prop_map(
            |(body, timestamp, signature, content_type, retry_num, retry_reason)| Request {
                body,
                timestamp,
                signature,
                content_type,
                retry_num,
                retry_reason,
            },
        )
}

/// A request as sent: its header bytes and body, and what the signing promised.
#[derive(Debug, Clone)]
struct Built {
    body: Vec<u8>,
    timestamp: Option<Vec<u8>>,
    signature: Option<Vec<u8>>,
    /// Correctly signed at a timestamp within the skew.
    signed: bool,
    /// Signed with a foreign secret or altered after signing, timestamp within the skew.
    forged: bool,
}

fn build(request: &Request, now: i64) -> Built {
    let (timestamp, ts) = match &request.timestamp {
        Timestamp::Absent => (None, None),
        Timestamp::Raw(raw) => (Some(raw.clone()), None),
        Timestamp::Clock(offset) => {
            let ts = now + offset;
            (Some(ts.to_string().into_bytes()), Some(ts))
        }
    };
    // One second of margin each side: the edge reads its own clock later.
    let in_window = ts.is_some_and(|ts| (ts - now).abs() < MAX_CLOCK_SKEW_SECS);
    let at = ts.unwrap_or(now);
    let mut body = request.body.clone();
    let (mut signed, mut forged) = (false, false);
    let signature = match &request.signature {
        Signature::Absent => None,
        Signature::Raw(raw) => Some(raw.clone()),
        Signature::Signed(i) => {
            signed = in_window;
            Some(sign(SECRETS[*i], at, &body).into_bytes())
        }
        Signature::Upper(i) => {
            signed = in_window;
            let s = sign(SECRETS[*i], at, &body);
            Some(format!("v0={}", s[3..].to_ascii_uppercase()).into_bytes())
        }
        Signature::Foreign(secret) => {
            // HMAC pads keys with zeros, and the edge trims its secrets.
            forged = in_window && !SECRETS.contains(&secret.trim().trim_end_matches('\0'));
            Some(sign(secret, at, &body).into_bytes())
        }
        Signature::Altered(i, x) => {
            let s = sign(SECRET, at, &body);
            if !body.is_empty() {
                let i = i.index(body.len());
                body[i] ^= x;
                forged = in_window;
            }
            Some(s.into_bytes())
        }
    };
    Built {
        body,
        timestamp,
        signature,
        signed,
        forged,
    }
}

// ---------------------------------------------------------------- the decision

/// What the handler decides before archive and Kafka.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    Unauthorized(SignatureError),
    Challenge(String),
    Accept,
}

/// The handler's pure steps, with every invariant they promise checked on the way.
fn decide(secrets: &SigningSecrets, built: &Built, now: i64) -> Decision {
    if let Err(reason) = secrets.verify(
        built.timestamp.as_deref(),
        built.signature.as_deref(),
        &built.body,
        now,
    ) {
        return Decision::Unauthorized(reason);
    }
    let info = inspect(&built.body);
    assert_eq!(inspect(&built.body), info, "inspect is pure");
    assert!(
        valid_key(&info.routing_key),
        "routing key {:?} is not a usable Kafka key",
        info.routing_key
    );
    if let Some(id) = &info.event_id {
        assert!(valid_key(id), "event id {id:?} is not a usable header");
    }
    match info.kind {
        EnvelopeKind::UrlVerification { challenge } => Decision::Challenge(challenge),
        _ => Decision::Accept,
    }
}

proptest! {
    #![proptest_config(proptest_config(count("FUZZ_EDGE_CASES", 3_000)))]

    #[test]
    fn every_request_ends_in_exactly_one_decision(request in request()) {
        const NOW: i64 = 1_764_000_000;
        let secrets = SigningSecrets::new(SECRETS).unwrap();
        let built = build(&request, NOW);
        let decision = decide(&secrets, &built, NOW);
        if built.signed {
            prop_assert!(
                !matches!(decision, Decision::Unauthorized(_)),
                "a correctly signed body was refused: {:?}", decision
            );
        }
        if built.forged {
            prop_assert_eq!(decision, Decision::Unauthorized(SignatureError::Mismatch));
        }
    }
}

// ---------------------------------------------------------------- the real edge

fn generate<S: Strategy>(strategy: S, n: usize, seed: u64) -> Vec<S::Value> {
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).expect("generate").current())
        .collect()
}

fn seed() -> u64 {
    std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED)
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_requests_on_a_real_socket_get_one_documented_status_each() {
    let cluster = kafka_cluster();
    let topic = cluster.names().raw_events();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let archive = Archive::open(&url, &S3Settings::default()).await.unwrap();
    let (edge, shutdown) =
        start_edge(config(&bootstrap, &topic, &url, S3Settings::default())).await;
    let http = reqwest::Client::new();
    let addr = edge.addr;

    let n = count("FUZZ_EDGE_REQUESTS", 300) as usize;
    let seed = seed();
    println!("fuzz_edge: {n} requests, seed {seed} (PROPTEST_RNG_SEED to change)");
    let requests = generate(request(), n, seed);
    let now = now();
    let built: Vec<Built> = requests.iter().map(|r| build(r, now)).collect();

    let send = |request: &Request, built: &Built| {
        let http = http.clone();
        let mut post = http
            .post(format!("http://{addr}/slack/events"))
            .body(built.body.clone());
        let header =
            |v: &[u8]| reqwest::header::HeaderValue::from_bytes(v).expect("a valid header value");
        for (name, value) in [
            ("x-slack-request-timestamp", built.timestamp.as_deref()),
            ("x-slack-signature", built.signature.as_deref()),
            ("content-type", request.content_type.as_deref()),
            ("x-slack-retry-num", request.retry_num.as_deref()),
            ("x-slack-retry-reason", request.retry_reason.as_deref()),
        ] {
            if let Some(value) = value {
                post = post.header(name, header(value));
            }
        }
        async move {
            let response = post.send().await.expect("the edge answers");
            let status = response.status().as_u16();
            let text = response.bytes().await.expect("a body").to_vec();
            (status, text)
        }
    };
    let mut answers = Vec::with_capacity(n);
    for chunk in requests.iter().zip(&built).collect::<Vec<_>>().chunks(8) {
        answers.extend(futures::future::join_all(chunk.iter().map(|(r, b)| send(r, b))).await);
    }

    // Each request: one status of 200, 401, 503; signed never 4xx; forged 401.
    let mut problems = Vec::new();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    // body -> (answered 200 and produced, answered 503)
    let mut expected: HashMap<Vec<u8>, (usize, usize)> = HashMap::new();
    for (i, (built, (status, text))) in built.iter().zip(&answers).enumerate() {
        *statuses.entry(*status).or_default() += 1;
        if ![200, 401, 503].contains(status) {
            problems.push(format!("#{i}: status {status}"));
        }
        if built.signed && (400..500).contains(status) {
            problems.push(format!(
                "#{i}: a correctly signed body was answered {status}: {:?}",
                requests[i]
            ));
        }
        if built.forged && *status != 401 {
            problems.push(format!("#{i}: a forged body was answered {status}"));
        }
        let info = inspect(&built.body);
        match (status, &info.kind) {
            (200, EnvelopeKind::UrlVerification { challenge }) => {
                let answer: serde_json::Value = serde_json::from_slice(text).expect("JSON answer");
                if answer != serde_json::json!({ "challenge": challenge }) {
                    problems.push(format!("#{i}: challenge answered {answer}"));
                }
            }
            (200, _) => expected.entry(built.body.clone()).or_default().0 += 1,
            (503, _) => expected.entry(built.body.clone()).or_default().1 += 1,
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        built.iter().filter(|b| b.signed).count() >= n / 3,
        "the generator signs most requests"
    );

    // Kafka holds exactly the accepted bodies (and at most the 503 ones), each
    // naming an archive object with the same body.
    let accepted: usize = expected.values().map(|(ok, _)| ok).sum();
    let records = read_topic(&bootstrap, &topic, accepted, Duration::from_secs(30)).await;
    let total = slackline_testkit::kafka::topic_len(&bootstrap, &topic, PARTITIONS);
    let mut produced: HashMap<Vec<u8>, usize> = HashMap::new();
    for record in &records {
        *produced.entry(record.payload.clone()).or_default() += 1;
        let object = archive
            .get(&record.headers["archive-key"])
            .await
            .expect("the archive object of a produced record exists");
        assert_eq!(
            ArchiveRecord::from_json(&object).unwrap().body.as_ref(),
            record.payload.as_slice()
        );
    }
    for (body, (ok, unavailable)) in &expected {
        let got = produced.get(body).copied().unwrap_or(0);
        assert!(
            (*ok..=ok + unavailable).contains(&got),
            "a body answered 200 {ok} times and 503 {unavailable} times is in Kafka {got} times"
        );
    }
    for (body, got) in &produced {
        assert!(
            expected.contains_key(body),
            "{got} record(s) in Kafka for a body that was not accepted: {:?}",
            String::from_utf8_lossy(body)
        );
    }
    assert!(
        (total as usize) <= expected.values().map(|(ok, u)| ok + u).sum::<usize>(),
        "{total} records in the topic"
    );
    let mut statuses: Vec<_> = statuses.into_iter().collect();
    statuses.sort();
    println!(
        "fuzz_edge: statuses {statuses:?}, {} records produced",
        records.len()
    );

    // Raw garbage on the socket: never a 200, and the edge keeps serving.
    let garbage = generate(
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            (header_value(), prop::collection::vec(any::<u8>(), 0..256)).prop_map(|(h, b)| {
                let mut raw =
                    b"POST /slack/events HTTP/1.1\r\nhost: x\r\nx-slack-signature: ".to_vec();
                raw.extend(h);
                raw.extend_from_slice(b"\r\ncontent-length: 4\r\n\r\n");
                raw.extend(b);
                raw
            }),
        ],
        40,
        seed ^ 1,
    );
    let raw = futures::future::join_all(garbage.iter().map(|bytes| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = stream.write_all(bytes).await;
        let _ = stream.shutdown().await;
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer)).await;
        answer
    }))
    .await;
    for (bytes, answer) in garbage.iter().zip(&raw) {
        assert!(
            !answer.starts_with(b"HTTP/1.1 200"),
            "garbage answered 200: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert_eq!(
        post(
            &http,
            addr,
            &message_event("C0AFTER", "EvAfter", "still here")
        )
        .await,
        200
    );

    shutdown.trigger();
    edge.wait().await.expect("the edge stops cleanly");
}
