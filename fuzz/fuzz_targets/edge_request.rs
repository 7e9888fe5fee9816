//! The edge's per-request decision over arbitrary bytes and headers: Slack's signature
//! check (`SigningSecrets::verify`) then the envelope's routing (`inspect`), the two
//! pure steps `services/edge/src/handler.rs` takes before any I/O. Every input ends as
//! exactly one decision: 401 with a named reason, the url_verification answer, or
//! "archive and produce" with a usable Kafka key. A body signed with a configured
//! secret at a timestamp within the allowed skew is never refused, whatever its
//! bytes; altering one byte of a signed body, or signing with another secret, is.
//!
//! `cargo +nightly fuzz run edge_request` (see the README's "Fuzzing" paragraph).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use slackline_slack::signature::MAX_CLOCK_SKEW_SECS;
use slackline_slack::{inspect, sign, EnvelopeKind, SignatureError, SigningSecrets};

const NOW: i64 = 1_764_000_000;
const SECRETS: [&str; 2] = ["old-secret", "test-signing-secret"];

#[derive(Arbitrary, Debug)]
enum Timestamp<'a> {
    Absent,
    Raw(&'a [u8]),
    /// Our clock plus this many seconds, as Slack writes it.
    Clock(i32),
    /// The same number with leading zeros (other bytes, so another signature).
    Padded(i16, u8),
}

#[derive(Arbitrary, Debug)]
enum Signature<'a> {
    Absent,
    Raw(&'a [u8]),
    /// Signed over the body with one of the configured secrets (index mod 2).
    Signed(u8),
    /// Signed with a secret the edge does not have.
    Foreign(&'a str),
    /// Signed correctly, then one byte of the body is altered.
    SignedThenAltered(u16, u8),
    /// Signed correctly, hex digits upper-cased.
    Upper(u8),
}

#[derive(Arbitrary, Debug)]
struct Request<'a> {
    timestamp: Timestamp<'a>,
    signature: Signature<'a>,
    body: &'a [u8],
}

/// What the handler does with a request, before archive and Kafka.
#[derive(Debug, PartialEq)]
enum Decision {
    Unauthorized(SignatureError),
    Challenge(String),
    Accept { routing_key: String },
}

fn decide(
    secrets: &SigningSecrets,
    ts: Option<&[u8]>,
    sig: Option<&[u8]>,
    body: &[u8],
) -> Decision {
    if let Err(reason) = secrets.verify(ts, sig, body, NOW) {
        return Decision::Unauthorized(reason);
    }
    let info = inspect(body);
    if let Some(id) = &info.event_id {
        assert!(
            valid_key(id),
            "event id {id:?} is not a usable header value"
        );
    }
    assert!(
        valid_key(&info.routing_key),
        "routing key {:?} is not a usable Kafka key",
        info.routing_key
    );
    assert_eq!(inspect(body), info, "inspect is pure");
    match info.kind {
        EnvelopeKind::UrlVerification { challenge } => {
            // The answer is JSON built from it: must always serialise.
            serde_json::to_vec(&serde_json::json!({ "challenge": challenge }))
                .expect("challenge answer serialises");
            Decision::Challenge(challenge)
        }
        _ => Decision::Accept {
            routing_key: info.routing_key,
        },
    }
}

fn valid_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic())
}

fuzz_target!(|request: Request<'_>| {
    let secrets = SigningSecrets::new(SECRETS).expect("secrets");
    let (ts_bytes, ts_value): (Option<Vec<u8>>, Option<i64>) = match request.timestamp {
        Timestamp::Absent => (None, None),
        Timestamp::Raw(raw) => (Some(raw.to_vec()), None),
        Timestamp::Clock(offset) => {
            let ts = NOW + i64::from(offset);
            (Some(ts.to_string().into_bytes()), Some(ts))
        }
        Timestamp::Padded(offset, zeros) => {
            let ts = NOW + i64::from(offset);
            let padded = format!("{}{ts}", "0".repeat(usize::from(zeros % 4)));
            (Some(padded.into_bytes()), None)
        }
    };
    let in_window = ts_value.is_some_and(|ts| (ts - NOW).abs() <= MAX_CLOCK_SKEW_SECS);
    let signed_at = ts_value.unwrap_or(NOW);
    let mut body = request.body.to_vec();
    let mut expect_ok = false;
    let mut expect_mismatch = false;
    let sig: Option<Vec<u8>> = match request.signature {
        Signature::Absent => None,
        Signature::Raw(raw) => Some(raw.to_vec()),
        Signature::Signed(i) => {
            expect_ok = in_window;
            Some(sign(SECRETS[usize::from(i % 2)], signed_at, &body).into_bytes())
        }
        Signature::Upper(i) => {
            expect_ok = in_window;
            let s = sign(SECRETS[usize::from(i % 2)], signed_at, &body);
            Some(format!("v0={}", s[3..].to_ascii_uppercase()).into_bytes())
        }
        Signature::Foreign(secret) => {
            // HMAC pads keys with zeros: "k" and "k\0" are the same key.
            let same = SECRETS.contains(&secret.trim_end_matches('\0'));
            expect_mismatch = in_window && !same;
            Some(sign(secret, signed_at, &body).into_bytes())
        }
        Signature::SignedThenAltered(at, xor) => {
            let s = sign(SECRETS[1], signed_at, &body);
            if !body.is_empty() && xor != 0 {
                let i = usize::from(at) % body.len();
                body[i] ^= xor;
                expect_mismatch = in_window;
            }
            Some(s.into_bytes())
        }
    };
    let decision = decide(&secrets, ts_bytes.as_deref(), sig.as_deref(), &body);
    if expect_ok {
        assert!(
            !matches!(decision, Decision::Unauthorized(_)),
            "a correctly signed body was refused: {decision:?}"
        );
    }
    if expect_mismatch {
        assert_eq!(
            decision,
            Decision::Unauthorized(SignatureError::Mismatch),
            "an altered or foreign-signed body was not refused"
        );
    }
});
