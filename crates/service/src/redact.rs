//! Keeping secrets out of `Debug` output and logs: settings that hold credentials
//! (`DATABASE_URL`, `KAFKA_PROPERTIES`) write their `Debug` by hand through these
//! helpers, so that logging a service's configuration never prints a password.
//!
//! Redaction errs on the side of hiding: a URL it cannot take apart is hidden whole,
//! and a property is secret when its name merely looks like one.

/// What a hidden value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Words that make a setting's name secret-looking (compared in lowercase):
/// `sasl.password`, `ssl.key.password`, `ssl.keystore.password`,
/// `sasl.oauthbearer.client.secret`, `sasl.jaas.config` (holds a password), the
/// private key PEM `ssl.key.pem`, `sasl.oauthbearer.config` (may hold a client
/// secret), any `*token*`, `*credential*`, `*private*`.
const SECRET_WORDS: [&str; 10] = [
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "private",
    "jaas",
    "key.pem",
    "oauthbearer.config",
    "oauthbearer.extensions",
];

/// Whether a setting named `name` holds a secret (see [`SECRET_WORDS`]).
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
}

/// The value of setting `name` as it may be shown: [`REDACTED`] for a secret-looking
/// name, a URL with its password hidden (see [`url`]), anything else as it is.
pub fn value(name: &str, value: &str) -> String {
    if is_secret_name(name) {
        REDACTED.to_owned()
    } else if value.contains("://") {
        url(value)
    } else {
        value.to_owned()
    }
}

/// `raw` with the password of its user info and the values of secret-looking query
/// parameters replaced by [`REDACTED`]:
/// `postgres://app:hunter2@db:5432/x?password=y&sslmode=require` becomes
/// `postgres://app:<redacted>@db:5432/x?password=<redacted>&sslmode=require`.
///
/// The user info ends at the last `@`, so a password with an unescaped `@`, `/` or
/// `?` is hidden too (at worst with more than the password). Something that is not a
/// `scheme://` URL (a key/value connection string, say) is hidden whole.
pub fn url(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://").map(|i| i + 3) else {
        return REDACTED.to_owned();
    };
    let (scheme, rest) = raw.split_at(scheme_end);
    let (authority_and_path, fragment) = match rest.rfind('@') {
        // A `#` before the user info's end is part of the password.
        Some(at) => match rest[at..].find('#') {
            Some(hash) => rest.split_at(at + hash),
            None => (rest, ""),
        },
        None => match rest.find('#') {
            Some(hash) => rest.split_at(hash),
            None => (rest, ""),
        },
    };
    let (user_info, after_user) = match authority_and_path.rfind('@') {
        Some(at) => (
            Some(&authority_and_path[..at]),
            &authority_and_path[at + 1..],
        ),
        None => (None, authority_and_path),
    };
    let mut out = String::with_capacity(raw.len());
    out.push_str(scheme);
    if let Some(user_info) = user_info {
        match user_info.split_once(':') {
            Some((user, _password)) => {
                out.push_str(user);
                out.push(':');
                out.push_str(REDACTED);
            }
            None => out.push_str(user_info),
        }
        out.push('@');
    }
    match after_user.split_once('?') {
        Some((host_and_path, query)) => {
            out.push_str(host_and_path);
            out.push('?');
            out.push_str(&redact_query(query));
        }
        None => out.push_str(after_user),
    }
    out.push_str(fragment);
    out
}

/// `a=1&password=x` → `a=1&password=<redacted>`.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_name(name) => format!("{name}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_hidden() {
        for (raw, shown) in [
            (
                "postgres://app:hunter2@db:5432/x",
                "postgres://app:<redacted>@db:5432/x",
            ),
            (
                "postgresql://app:hun%40ter2@db/x?sslmode=require",
                "postgresql://app:<redacted>@db/x?sslmode=require",
            ),
            // Unescaped special characters in the password.
            (
                "postgres://app:p@ss/w?rd#1@db/x",
                "postgres://app:<redacted>@db/x",
            ),
            (
                "postgres://db/x?user=app&password=hunter2&sslpassword=k2&sslmode=verify-full",
                "postgres://db/x?user=app&password=<redacted>&sslpassword=<redacted>\
                 &sslmode=verify-full",
            ),
            ("postgres://app@db/x", "postgres://app@db/x"),
            ("postgres://db/x#frag", "postgres://db/x#frag"),
            ("host=db password=hunter2", REDACTED),
            ("", REDACTED),
        ] {
            assert_eq!(url(raw), shown, "{raw}");
        }
    }

    #[test]
    fn secret_names() {
        for name in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "sasl.jaas.config",
            "ssl.key.pem",
            "sasl.oauthbearer.config",
            "SASL.PASSWORD",
            "api_token",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "sasl.username",
            "security.protocol",
            "sasl.mechanisms",
            "ssl.ca.location",
            "session.timeout.ms",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
        assert_eq!(value("sasl.password", "x"), REDACTED);
        assert_eq!(value("sasl.username", "bob"), "bob");
        assert_eq!(
            value(
                "sasl.oauthbearer.token.endpoint.url",
                "https://id:s3cr3t@idp/token"
            ),
            REDACTED
        );
        assert_eq!(
            value("some.endpoint", "https://id:s3cr3t@idp/x"),
            "https://id:<redacted>@idp/x"
        );
    }
}
