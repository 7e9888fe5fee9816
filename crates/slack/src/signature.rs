//! Slack request signing (`v0`): `v0=` + hex(HMAC-SHA256(secret, "v0:{ts}:{body}")).
//!
//! The comparison is constant time (`Mac::verify_slice`), runs over the raw bytes as
//! received, and accepts any of several secrets so that a secret can be rotated (or
//! several apps can share one edge) without a window of 401s.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Header carrying the request timestamp (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
/// Header carrying the `v0=<hex>` signature.
pub const SIGNATURE_HEADER: &str = "x-slack-signature";
/// Largest accepted distance between the request timestamp and our clock, in seconds.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

const VERSION_PREFIX: &str = "v0=";

/// Why a request's signature was not accepted. Each variant is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Slack-Request-Timestamp` header.
    #[error("missing X-Slack-Request-Timestamp header")]
    MissingTimestamp,
    /// No `X-Slack-Signature` header.
    #[error("missing X-Slack-Signature header")]
    MissingSignature,
    /// The timestamp is not a whole number of seconds.
    #[error("malformed X-Slack-Request-Timestamp header")]
    MalformedTimestamp,
    /// The signature is not `v0=` followed by 64 hex digits.
    #[error("malformed X-Slack-Signature header")]
    MalformedSignature,
    /// The timestamp is more than five minutes in the past (a possible replay).
    #[error("request timestamp is more than {MAX_CLOCK_SKEW_SECS} s old")]
    Stale,
    /// The timestamp is more than five minutes in the future.
    #[error("request timestamp is more than {MAX_CLOCK_SKEW_SECS} s in the future")]
    Future,
    /// The signature matches none of the configured secrets.
    #[error("signature matches no configured signing secret")]
    Mismatch,
}

impl SignatureError {
    /// A short, stable name for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::MissingTimestamp => "missing_timestamp",
            SignatureError::MissingSignature => "missing_signature",
            SignatureError::MalformedTimestamp => "malformed_timestamp",
            SignatureError::MalformedSignature => "malformed_signature",
            SignatureError::Stale => "stale",
            SignatureError::Future => "future",
            SignatureError::Mismatch => "mismatch",
        }
    }

    /// Every reason, so that metrics can be initialised at zero.
    pub const ALL: [SignatureError; 7] = [
        SignatureError::MissingTimestamp,
        SignatureError::MissingSignature,
        SignatureError::MalformedTimestamp,
        SignatureError::MalformedSignature,
        SignatureError::Stale,
        SignatureError::Future,
        SignatureError::Mismatch,
    ];
}

/// The configuration error for an empty or blank secret list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at least one non-empty signing secret is required")]
pub struct NoSecrets;

/// The signing secrets accepted at once. `Debug` never prints them.
#[derive(Clone)]
pub struct SigningSecrets {
    /// Keyed MACs prepared once, so each request only clones the keyed state.
    macs: Vec<HmacSha256>,
}

impl std::fmt::Debug for SigningSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningSecrets({} redacted)", self.macs.len())
    }
}

impl SigningSecrets {
    /// Secrets from a list; blank entries are skipped, an empty result is an error.
    pub fn new<I, S>(secrets: I) -> Result<Self, NoSecrets>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let macs: Vec<HmacSha256> = secrets
            .into_iter()
            .filter_map(|s| {
                let s = s.as_ref().trim();
                // HMAC accepts keys of any length, so new_from_slice cannot fail here.
                (!s.is_empty()).then(|| HmacSha256::new_from_slice(s.as_bytes()).ok())?
            })
            .collect();
        if macs.is_empty() {
            return Err(NoSecrets);
        }
        Ok(SigningSecrets { macs })
    }

    /// Secrets from a comma-separated list, as in `SLACK_SIGNING_SECRETS`.
    pub fn parse_list(list: &str) -> Result<Self, NoSecrets> {
        Self::new(list.split(','))
    }

    /// How many secrets are accepted.
    pub fn len(&self) -> usize {
        self.macs.len()
    }

    /// Always false: an empty set cannot be built.
    pub fn is_empty(&self) -> bool {
        self.macs.is_empty()
    }

    /// Verifies a request from its two header values (raw bytes, `None` when absent),
    /// the raw body and the current Unix time in seconds.
    pub fn verify(
        &self,
        timestamp: Option<&[u8]>,
        signature: Option<&[u8]>,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(), SignatureError> {
        let timestamp = timestamp.ok_or(SignatureError::MissingTimestamp)?;
        let signature = signature.ok_or(SignatureError::MissingSignature)?;
        let ts = parse_timestamp(timestamp)?;
        let expected = parse_signature(signature)?;
        if ts < now_unix - MAX_CLOCK_SKEW_SECS {
            return Err(SignatureError::Stale);
        }
        if ts > now_unix + MAX_CLOCK_SKEW_SECS {
            return Err(SignatureError::Future);
        }
        let mut matched = false;
        for keyed in &self.macs {
            let mut mac = keyed.clone();
            feed(&mut mac, timestamp, body);
            // Constant-time comparison; every secret is tried so timing does not tell
            // which one matched.
            matched |= mac.verify_slice(&expected).is_ok();
        }
        if matched {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

fn feed(mac: &mut HmacSha256, timestamp: &[u8], body: &[u8]) {
    mac.update(b"v0:");
    mac.update(timestamp);
    mac.update(b":");
    mac.update(body);
}

fn parse_timestamp(raw: &[u8]) -> Result<i64, SignatureError> {
    if raw.is_empty() || raw.len() > 12 || !raw.iter().all(u8::is_ascii_digit) {
        return Err(SignatureError::MalformedTimestamp);
    }
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(SignatureError::MalformedTimestamp)
}

fn parse_signature(raw: &[u8]) -> Result<[u8; 32], SignatureError> {
    let hex_part = raw
        .strip_prefix(VERSION_PREFIX.as_bytes())
        .ok_or(SignatureError::MalformedSignature)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| SignatureError::MalformedSignature)?;
    Ok(out)
}

/// Signs a body the way Slack does: returns the `X-Slack-Signature` value.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 accepts keys of any length"),
    };
    feed(&mut mac, ts.as_bytes(), body);
    format!(
        "{VERSION_PREFIX}{}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"type":"event_callback","event_id":"Ev1"}"#;

    fn check(
        secrets: &SigningSecrets,
        ts: i64,
        sig: &str,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let ts = ts.to_string();
        secrets.verify(Some(ts.as_bytes()), Some(sig.as_bytes()), body, NOW)
    }

    #[test]
    fn slack_documented_example_verifies() {
        // The worked example from Slack's "Verifying requests from Slack" guide.
        let secrets = SigningSecrets::new(["8f742231b10e8888abcd99yyyzzz85a5"]).unwrap();
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        secrets
            .verify(
                Some(b"1531420618"),
                Some(sig.as_bytes()),
                body,
                1531420618 + 10,
            )
            .unwrap();
    }

    #[test]
    fn valid_signature_is_accepted() {
        let secrets = SigningSecrets::new(["s3cret"]).unwrap();
        check(&secrets, NOW, &sign("s3cret", NOW, BODY), BODY).unwrap();
    }

    #[test]
    fn wrong_secret_is_a_mismatch() {
        let secrets = SigningSecrets::new(["s3cret"]).unwrap();
        let err = check(&secrets, NOW, &sign("other", NOW, BODY), BODY).unwrap_err();
        assert_eq!(err, SignatureError::Mismatch);
    }

    #[test]
    fn second_of_two_secrets_is_accepted() {
        let secrets = SigningSecrets::parse_list("old-secret, new-secret").unwrap();
        assert_eq!(secrets.len(), 2);
        check(&secrets, NOW, &sign("new-secret", NOW, BODY), BODY).unwrap();
        check(&secrets, NOW, &sign("old-secret", NOW, BODY), BODY).unwrap();
        assert_eq!(
            check(&secrets, NOW, &sign("third", NOW, BODY), BODY),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused_at_the_boundary() {
        let secrets = SigningSecrets::new(["s"]).unwrap();
        for (offset, want) in [
            (-MAX_CLOCK_SKEW_SECS, Ok(())),
            (-MAX_CLOCK_SKEW_SECS - 1, Err(SignatureError::Stale)),
            (-86_400, Err(SignatureError::Stale)),
            (MAX_CLOCK_SKEW_SECS, Ok(())),
            (MAX_CLOCK_SKEW_SECS + 1, Err(SignatureError::Future)),
        ] {
            let ts = NOW + offset;
            assert_eq!(
                check(&secrets, ts, &sign("s", ts, BODY), BODY),
                want,
                "offset {offset}"
            );
        }
    }

    #[test]
    fn missing_headers_are_named() {
        let secrets = SigningSecrets::new(["s"]).unwrap();
        let sig = sign("s", NOW, BODY);
        let ts = NOW.to_string();
        assert_eq!(
            secrets.verify(None, Some(sig.as_bytes()), BODY, NOW),
            Err(SignatureError::MissingTimestamp)
        );
        assert_eq!(
            secrets.verify(Some(ts.as_bytes()), None, BODY, NOW),
            Err(SignatureError::MissingSignature)
        );
    }

    #[test]
    fn malformed_headers_are_named() {
        let secrets = SigningSecrets::new(["s"]).unwrap();
        let sig = sign("s", NOW, BODY);
        for ts in ["", "abc", "-5", "1.5", " 1700000000", "99999999999999"] {
            assert_eq!(
                secrets.verify(Some(ts.as_bytes()), Some(sig.as_bytes()), BODY, NOW),
                Err(SignatureError::MalformedTimestamp),
                "{ts:?}"
            );
        }
        for bad in [
            "",
            "v0=",
            "v1=00",
            &sig[3..],
            &format!("v0={}", &sig[4..]),
            "v0=zz",
        ] {
            assert_eq!(
                check(&secrets, NOW, bad, BODY),
                Err(SignatureError::MalformedSignature),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn body_altered_by_one_byte_is_a_mismatch() {
        let secrets = SigningSecrets::new(["s"]).unwrap();
        let sig = sign("s", NOW, BODY);
        for i in 0..BODY.len() {
            let mut altered = BODY.to_vec();
            altered[i] ^= 0x01;
            assert_eq!(
                check(&secrets, NOW, &sig, &altered),
                Err(SignatureError::Mismatch),
                "byte {i}"
            );
        }
        let mut longer = BODY.to_vec();
        longer.push(b' ');
        assert_eq!(
            check(&secrets, NOW, &sig, &longer),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn uppercase_hex_digest_is_the_same_signature() {
        let secrets = SigningSecrets::new(["s"]).unwrap();
        let sig = sign("s", NOW, BODY);
        let upper = format!("v0={}", sig[3..].to_ascii_uppercase());
        check(&secrets, NOW, &upper, BODY).unwrap();
    }

    #[test]
    fn secrets_are_never_printed_and_blank_lists_are_refused() {
        let secrets = SigningSecrets::parse_list("topsecret").unwrap();
        assert!(!format!("{secrets:?}").contains("topsecret"));
        assert_eq!(SigningSecrets::parse_list(" , ,").unwrap_err(), NoSecrets);
        assert_eq!(SigningSecrets::parse_list("").unwrap_err(), NoSecrets);
    }
}
